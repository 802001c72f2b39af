"""The Redis key schema: the one place that spells key names.

All keys of a sale's bucket share one hash tag so every script touches a single Redis
Cluster slot: ``{s:<sale_id>}`` for bucket 0 (every unbucketed sale), ``{s:<sale_id>:<b>}``
for bucket b >= 1 of a sale split into buckets (``sale create --buckets K``, engine/buckets.py).
Each bucket is a full copy of the sale's key set with its share of the tokens. Scripts
never build key names; they get them through KEYS from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

PREFIX = "fs"
ACTIVE_SALES = f"{PREFIX}:sales:active"  # set of sale ids the reconciler and sweeper watch
CONSUMER_GROUP = "reconciler"
MAX_BUCKETS = 64  # buckets of one sale: one per master at most is useful; 64 is plenty


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


def bucket_name(sale_id: int, bucket: int = 0) -> str:
    """A bucket's name: ``<sale_id>`` for bucket 0, ``<sale_id>-<b>`` otherwise. It prefixes
    the bucket's reservation ids and is what the sold-out flags' messages carry."""
    return str(sale_id) if bucket == 0 else f"{sale_id}-{bucket}"


def parse_bucket_name(name: str) -> tuple[int, int] | None:
    """(sale_id, bucket) of a bucket name; None when it is not one."""
    sale, sep, bucket = name.partition("-")
    if not sale.isascii() or not sale.isdigit() or len(sale) > 18:
        return None
    if not sep:
        return int(sale), 0
    if not bucket.isascii() or not bucket.isdigit() or not 1 <= int(bucket) < MAX_BUCKETS:
        return None
    return int(sale), int(bucket)


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

    A sale split into buckets (engine/buckets.py) has this set once per bucket, and each
    bucket two hashes more, ``moves_out`` and ``moves_in`` (transfers between buckets),
    and the meta fields ``moved_out``, ``moved_in`` and ``move_seq``; bucket 0's meta
    also says ``buckets`` (absent: 1).
    """
    sale_id: int
    bucket: int
    name: str  # bucket_name(sale_id, bucket)
    meta: str
    buyers: str
    holds: str
    res: str
    events: str
    moves_out: str  # hash: transfer id -> "<to bucket>:<units>", tokens sent, not yet done
    moves_in: str   # hash: transfer id -> units, every transfer this bucket received
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
    for_move_out: tuple[str, ...]
    for_move_in: tuple[str, ...]
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
def sale_keys(sale_id: int, bucket: int = 0) -> SaleKeys:
    """The keys of bucket ``bucket`` of a sale (bucket 0: the sale's keys as they always
    were, so an unbucketed sale is unchanged)."""
    tag = (f"{PREFIX}:{{s:{sale_id}}}" if bucket == 0
           else f"{PREFIX}:{{s:{sale_id}:{bucket}}}")
    meta, buyers, holds, res, events, moves_out, moves_in = (
        f"{tag}:{name}" for name in ("meta", "who", "holds", "res", "events", "mvo", "mvi"))
    legacy = tuple(f"{tag}:{name}" for name in ("tokens", "buyers", "idem", "seq", "rl"))
    every = (meta, buyers, holds, res, events)
    return SaleKeys(sale_id=sale_id, bucket=bucket, name=bucket_name(sale_id, bucket),
                    meta=meta, buyers=buyers, holds=holds, res=res, events=events,
                    moves_out=moves_out, moves_in=moves_in, legacy=legacy,
                    for_reserve=every, for_release=every, for_expire=every,
                    for_confirm=(meta, holds, res, events), for_load=(meta, events),
                    for_state=(meta,), for_move_out=(meta, moves_out),
                    for_move_in=(meta, moves_in), all=(*every, moves_out, moves_in))


def stream_bucket(stream_key: str) -> tuple[int, int]:
    """(sale_id, bucket) of one of a sale's keys (``fs:{s:<sale>}:...`` or
    ``fs:{s:<sale>:<b>}:...``)."""
    tag = stream_key.split("{s:", 1)[1].split("}", 1)[0]
    sale, _, bucket = tag.partition(":")
    return int(sale), int(bucket or 0)


def sale_streams(sale_id: int, buckets: int = 1) -> tuple[str, ...]:
    """The event streams of a sale, one per bucket (engine/buckets.py): the one place that
    says which streams the reconciler reads, acknowledges, claims, trims and measures for
    it."""
    return tuple(sale_keys(sale_id, b).events for b in range(buckets))


# Reservation ids: the one place their format is written down.
#
# ``<bucket name>-<n>``: ``<sale_id>-<n>`` in bucket 0, ``<sale_id>-<b>-<n>`` in bucket b >= 1,
# all decimal (URL-safe; the id alone routes any gateway to the bucket's keys and Redis
# Cluster slot without a lookup; two buckets on two masters may issue the same n, the
# bucket in the id keeps the ids apart). ``reserve.lua`` issues
# n = max(previous n + 1, Redis clock in microseconds) and keeps it in the sale's ``seq``
# field of ``meta``. One Redis admits far fewer than one reservation per microsecond, so n
# never runs ahead of the clock by more than a burst; when Redis forgets its last writes
# (an OS crash under ``appendfsync everysec``, a restart without AOF) ``seq`` goes back,
# but the clock has moved on past every id issued before the loss, so no id is ever issued
# twice. The one assumption is a Redis host clock that does not step back across a
# restart (the reconciler still records an id reused with another owner as a conflict, and the audit
# reports it). ``sale recover`` seeds ``seq`` above every id Postgres knows.


def reservation_number(reservation_id: str) -> int:
    """The ``n`` of ``<sale_id>-<n>`` or ``<sale_id>-<b>-<n>``."""
    return int(reservation_id.rpartition("-")[2])


def bucket_of_reservation(reservation_id: str) -> tuple[int, int] | None:
    """(sale_id, bucket) of a reservation id; None when it is not one of ours."""
    name, sep, seq = reservation_id.rpartition("-")
    if not sep or not seq.isascii() or not seq.isdigit() or len(seq) > 20:
        return None
    return parse_bucket_name(name)


def sale_of_reservation(reservation_id: str) -> int | None:
    """The sale of a reservation id; None when it is not one of ours."""
    found = bucket_of_reservation(reservation_id)
    return None if found is None else found[0]


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
