"""The Redis key schema: the one place that spells key names.

All keys of a sale share the hash tag ``{s:<sale_id>}`` so every script touches a single
Redis Cluster slot. Scripts never build key names; they get them through KEYS from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

PREFIX = "fs"
ACTIVE_SALES = f"{PREFIX}:sales:active"  # set of sale ids the reconciler and sweeper watch
CONSUMER_GROUP = "reconciler"


def tokens_returned_channel(db: int) -> str:
    """Pub/sub channel on which the scripts that return tokens publish the sale id.
    Channel names are global across a server's dbs, so the db is part of the name."""
    return f"{PREFIX}:tokens-returned:{db}"


def catalog_changes_channel(db: int) -> str:
    """Pub/sub channel of catalog cache invalidations (db in the name, as above)."""
    return f"{PREFIX}:catalog:changes:{db}"


def cart_key(user_id: int) -> str:
    return f"{PREFIX}:cart:{{u:{user_id}}}"


def account_key(user_id: int) -> str:
    """Hash of a user's standing (role, token version) that every gateway reads."""
    return f"{PREFIX}:acct:{{u:{user_id}}}"


def login_key(subject: str) -> str:
    """Throttle state of one login subject (``a:<email>`` or ``ip:<address>``)."""
    return f"{PREFIX}:login:{{{subject}}}"


def signup_key(address: str) -> str:
    return f"{PREFIX}:signup:{{{address}}}"


@dataclass(frozen=True, slots=True)
class SaleKeys:
    """A sale's five keys. The hot path reads and writes each hash with one command, so the
    fields that change together live together:

    - ``meta`` hash: the sale's terms (product_id, price, starts_ms, ends_ms,
      per_user_limit, hold_ms, initial, identity, loaded_ms), its ``state``, and its
      counters: ``tokens`` (units left to sell), ``held``, ``confirmed``, ``seq`` (the
      number of the last reservation id issued).
    - ``buyers`` hash, one per sale, three kinds of field: ``u:<user>`` -> units the user
      holds or bought, ``k:<user>:<idempotency key>`` -> reservation id, and the
      rate-limit buckets ``r:<user>`` / ``a:<client address>`` -> "millitokens:ms".
    - ``holds`` zset (reservation id -> expiry ms), ``res`` hash (reservation id -> record,
      format in lua/prelude.lua), ``events`` stream (read by the reconciler).
    """
    sale_id: int
    meta: str
    buyers: str
    holds: str
    res: str
    events: str
    # The keys of the layout before the lean gate (tokens, seq, idem, buyers, rate-limit
    # hash as keys of their own): only ``sale recover`` reads and deletes them.
    legacy: tuple[str, ...]
    # Key tuples in the order each script's header declares, built once per sale (the
    # batcher caches each tuple's encoded form).
    for_reserve: tuple[str, ...]
    for_release: tuple[str, ...]
    for_expire: tuple[str, ...]
    for_confirm: tuple[str, ...]
    for_load: tuple[str, ...]
    for_state: tuple[str, ...]
    all: tuple[str, ...]


BUYER_UNITS = "u:"  # field prefixes of the buyers hash (lua/reserve.lua writes the same)
BUYER_KEY = "k:"


def buyer_units_field(user_id: int | str) -> str:
    return f"{BUYER_UNITS}{user_id}"


def buyer_key_field(user_id: int | str, idempotency_key: str) -> str:
    return f"{BUYER_KEY}{user_id}:{idempotency_key}"


def units_by_buyer(buyers: dict) -> dict[int, int]:
    """user -> units, nonzero only, from the buyers hash as HGETALL returns it (bytes or
    text; the other fields, idempotency keys and rate-limit buckets, are skipped)."""
    units: dict[int, int] = {}
    for field, value in buyers.items():
        name = field.decode() if isinstance(field, bytes) else field
        if name.startswith(BUYER_UNITS) and int(value):
            units[int(name[len(BUYER_UNITS):])] = int(value)
    return units


@lru_cache(maxsize=4096)
def sale_keys(sale_id: int) -> SaleKeys:
    tag = f"{PREFIX}:{{s:{sale_id}}}"
    meta, buyers, holds, res, events = (
        f"{tag}:{name}" for name in ("meta", "who", "holds", "res", "events"))
    legacy = tuple(f"{tag}:{name}" for name in ("tokens", "buyers", "idem", "seq", "rl"))
    every = (meta, buyers, holds, res, events)
    return SaleKeys(sale_id=sale_id, meta=meta, buyers=buyers, holds=holds, res=res,
                    events=events, legacy=legacy,
                    for_reserve=every, for_release=every, for_expire=every,
                    for_confirm=(meta, holds, res, events), for_load=(meta, events),
                    for_state=(meta,), all=every)


def sale_streams(sale_id: int) -> tuple[str, ...]:
    """The event streams of a sale: the one place that says which streams the reconciler
    reads, acknowledges, claims, trims and measures for it."""
    return (sale_keys(sale_id).events,)


def sale_of_stream(stream: str) -> int:
    """The sale whose events ``stream`` (one of ``sale_streams``) carries."""
    return int(stream.split("{s:", 1)[1].split("}", 1)[0])


# Reservation ids: the one place their format is written down.
#
# ``<sale_id>-<n>``, both decimal (URL-safe; the sale id routes any gateway to the sale's
# keys and Redis Cluster slot without a lookup). ``reserve.lua`` issues
# n = max(previous n + 1, Redis clock in microseconds) and keeps it in the sale's ``seq``
# field of ``meta``. One Redis admits far fewer than one reservation per microsecond, so n
# never runs ahead of the clock by more than a burst; when Redis forgets its last writes
# (an OS crash under ``appendfsync everysec``, a restart without AOF) ``seq`` goes back,
# but the clock has moved on past every id issued before the loss, so no id is ever issued
# twice. The one assumption is a Redis host clock that does not step back across a
# restart (the reconciler still records an id reused with another owner as a conflict, and the audit
# reports it). ``sale recover`` seeds ``seq`` above every id Postgres knows.


def reservation_number(reservation_id: str) -> int:
    """The ``n`` of ``<sale_id>-<n>``."""
    return int(reservation_id.rpartition("-")[2])


def sale_of_reservation(reservation_id: str) -> int | None:
    """The sale of a reservation id ``<sale_id>-<n>``; None when it is not one of ours."""
    sale, sep, seq = reservation_id.partition("-")
    if (not reservation_id.isascii() or not sep or not sale.isdigit() or not seq.isdigit()
            or len(sale) > 18):
        return None
    return int(sale)


@dataclass(frozen=True, slots=True)
class RoomKeys:
    """A waiting room's keys, in its sale's slot (same hash tag)."""
    sale_id: int
    room: str      # hash: configuration, arrival counter, admission credit, measured rate
    waiting: str   # zset: user -> arrival number
    tickets: str   # hash: user -> "arrival:joined_ms"
    passes: str    # zset: user -> pass expiry (ms), every live pass
    fresh: str     # zset: user -> pass expiry (ms), live passes not yet used to reserve
    throttle: str  # hash: join buckets per client address
    for_scripts: tuple[str, ...]  # the room's keys, then the sale's meta (tokens, held)


@lru_cache(maxsize=4096)
def room_keys(sale_id: int) -> RoomKeys:
    tag = f"{PREFIX}:{{s:{sale_id}}}"
    room, waiting, tickets, passes, fresh, throttle = (
        f"{tag}:{name}" for name in ("room", "wq", "wt", "wp", "wf", "wrl"))
    sale = sale_keys(sale_id)
    return RoomKeys(sale_id=sale_id, room=room, waiting=waiting, tickets=tickets,
                    passes=passes, fresh=fresh, throttle=throttle,
                    for_scripts=(room, waiting, tickets, passes, fresh, throttle, sale.meta))
