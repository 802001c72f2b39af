"""The stock-aware waiting room of a flash sale.

Buyers join a line (one ticket per user, arrival order by Redis's clock); passes go to
the head of the line at the room's rate, and only while the live unused passes stay
within a margin of the tokens left; when no tokens are left and no held unit can come
back, every waiting ticket reads ``sold_out`` at once; units coming back (expired or
released holds) reopen the room. All state lives in Redis in the sale's slot and moves
only inside the Lua scripts (``join_queue.lua``, ``read_queue.lua``), so any number of
gateway workers share one room. The room advances whenever anyone joins or looks.

A pass is ``<sale>.<user>.<expires_ms>.<signature>``: an HMAC of the settings' secret
over the sale, the user and the expiry, checked in-process on each reservation attempt
(no Redis): useless to anyone else, for another sale, or after it expires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from engine import metrics
from engine.buckets import all_keys, read_tokens
from engine.cluster import batcher_beside
from engine.errors import NotFound, QueueRequired, RateLimited
from engine.keys import room_keys, sale_keys
from engine.scripts import Script, script

TicketStatus = Literal["waiting", "admitted", "sold_out", "expired"]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    admission_rate: int = 50        # passes per second
    pass_seconds: int = 120         # a pass's lifetime
    # Unused live passes may reach tokens left x (1 + this/100). 0: every pass holder who
    # buys at once gets a unit; more: fewer units idle while passes go unused.
    pass_margin_percent: int = 0
    stock_aware: bool = True        # False: a rate-only room (the benchmark's comparison)

    def fields(self) -> dict[str, int]:
        return {"rate": self.admission_rate, "pass_ms": self.pass_seconds * 1000,
                "margin": self.pass_margin_percent, "aware": int(self.stock_aware)}

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> RoomConfig:
        return cls(admission_rate=int(raw[b"rate"]), pass_seconds=int(raw[b"pass_ms"]) // 1000,
                   pass_margin_percent=int(raw[b"margin"]), stock_aware=raw[b"aware"] == b"1")


@dataclass(frozen=True, slots=True)
class RoomFigures:
    """The room as a whole, as of the last look."""
    waiting: int
    passes_live: int
    unused_passes: int
    admitted: int              # passes issued since the room opened
    measured_rate: float | None  # passes per second over the last window; None while unknown
    told_sold_out: int
    sold_out: bool

    def estimate(self, position: int) -> int | None:
        """Seconds until ``position`` reaches the head at the measured rate; None when
        unknown (no measurement yet, or nobody admitted lately)."""
        if not self.measured_rate:
            return None
        return max(0, round(position / self.measured_rate))


@dataclass(frozen=True, slots=True)
class Ticket:
    ticket: str
    sale_id: int
    user_id: int
    status: TicketStatus
    position: int | None
    estimated_wait_seconds: int | None
    pass_expires_ms: int | None
    created: bool
    room: RoomFigures


class PassSigner:
    """Signs and checks queue passes with a key derived from the settings' secret."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"flashsale queue pass v1", hashlib.sha256).digest()

    def _mac(self, sale_id: int, user_id: int, expires_ms: int) -> str:
        digest = hmac.new(self._key, f"{sale_id}.{user_id}.{expires_ms}".encode(),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, sale_id: int, user_id: int, expires_ms: int) -> str:
        return f"{sale_id}.{user_id}.{expires_ms}.{self._mac(sale_id, user_id, expires_ms)}"

    def check(self, queue_pass: str | None, *, sale_id: int, user_id: int) -> None:
        """Raise QueueRequired unless ``queue_pass`` is this user's live pass for this sale."""
        if not queue_pass:
            raise QueueRequired("This sale has a waiting room: join the queue and send the "
                                "pass it gives you as `queue_pass`.", details={"reason": "missing"})
        parts = queue_pass.split(".")
        if (len(parts) != 4 or not all(p.isdigit() and len(p) <= 18 for p in parts[:3])
                or not hmac.compare_digest(  # bytes: any text a client sends compares
                    parts[3].encode(), self._mac(int(parts[0]), int(parts[1]),
                                                 int(parts[2])).encode())
                or int(parts[0]) != sale_id or int(parts[1]) != user_id):
            raise QueueRequired("This queue pass is not yours for this sale.",
                                details={"reason": "invalid"})
        if int(parts[2]) <= time.time() * 1000:
            raise QueueRequired("Your queue pass has expired: join the queue again.",
                                details={"reason": "expired"})


JOIN = script("join_queue", "room_advance")
READ = script("read_queue", "room_advance")


class _Gauges:
    def __init__(self) -> None:
        self._children: dict[int, tuple[Any, ...]] = {}

    def set(self, sale_id: int, room: RoomFigures) -> None:
        children = self._children.get(sale_id)
        if children is None:
            label = str(sale_id)
            children = self._children[sale_id] = tuple(
                g.labels(label) for g in (metrics.ROOM_WAITING, metrics.ROOM_PASSES_LIVE,
                                          metrics.ROOM_ADMITTED, metrics.ROOM_TOLD_SOLD_OUT,
                                          metrics.ROOM_ESTIMATED_WAIT))
        waiting, live, admitted, told, wait = children
        waiting.set(room.waiting)
        live.set(room.passes_live)
        admitted.set(room.admitted)
        told.set(room.told_sold_out)
        estimate = room.estimate(room.waiting) if room.waiting else 0
        wait.set(float("nan") if estimate is None else estimate)


class WaitingRoom:
    def __init__(self, redis: aioredis.Redis, *, secret: str, join_rate: int = 0,
                 batching: bool = True) -> None:
        """``join_rate``: new tickets per second per client address (0 = off). Script calls
        go auto-batched on one connection of their own, as admissions do."""
        self.redis = redis
        self._batcher = batcher_beside(redis) if batching else None
        self.signer = PassSigner(secret)
        self.join_rate = join_rate
        self._configs: dict[int, asyncio.Future] = {}
        self._known: dict[int, RoomConfig | None] = {}  # loaded sales: their room or None
        self._buckets: dict[int, int] = {}  # sale id -> its bucket count, once loaded
        self._gauges = _Gauges()

    async def _run(self, script: Script, keys: tuple[str, ...], args: tuple) -> Any:
        if self._batcher is not None:
            return await self._batcher.call(script, keys, args)
        return await script(self.redis, keys, args)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.drain()

    # -- configuration -------------------------------------------------------------------
    async def config(self, sale_id: int) -> RoomConfig | None:
        """The sale's room, or None when the sale has none. Cached per process once the
        sale is loaded (a room is configured before its sale's tokens exist and never
        changes after); concurrent first lookups share one Redis call."""
        lookup = self._configs.get(sale_id)
        if lookup is None:
            lookup = self._configs[sale_id] = asyncio.ensure_future(self._read_config(sale_id))
        try:
            loaded, config = lookup.result() if lookup.done() else await asyncio.shield(lookup)
        except BaseException:
            if lookup.done() and self._configs.get(sale_id) is lookup:
                del self._configs[sale_id]  # an outage is not an answer: ask again next time
            raise
        if not loaded and self._configs.get(sale_id) is lookup:
            del self._configs[sale_id]
        if loaded:
            self._known[sale_id] = config
        return config

    def cached(self, sale_id: int) -> tuple[bool, RoomConfig | None]:
        """``(known, room)`` without Redis or a coroutine: known once ``config`` has
        loaded the sale here (room None: the sale has no waiting room)."""
        known = self._known
        return (True, known[sale_id]) if sale_id in known else (False, None)

    async def _read_config(self, sale_id: int) -> tuple[bool, RoomConfig | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(sale_keys(sale_id).meta, "initial", "buckets")
            pipe.hmget(room_keys(sale_id).room, "rate", "pass_ms", "margin", "aware")
            (loaded, buckets), values = await pipe.execute()
        if loaded is not None:
            self._buckets[sale_id] = int(buckets or 1)
        config = (RoomConfig.from_fields(dict(zip((b"rate", b"pass_ms", b"margin", b"aware"),
                                                  values, strict=True)))
                  if values[0] is not None else None)
        return bool(loaded), config

    # -- the buyer's side ----------------------------------------------------------------
    async def join(self, sale_id: int, user_id: int, *, client: str = "") -> Ticket:
        answer = await self._run(JOIN, room_keys(sale_id).for_scripts,
                                 (user_id, client, self.join_rate,
                                  *await self._other_buckets(sale_id)))
        return self._ticket(sale_id, user_id, answer)

    async def look(self, sale_id: int, user_id: int) -> Ticket:
        """The caller's ticket, after advancing the room; NotFound without one."""
        answer = await self._run(READ, room_keys(sale_id).for_scripts,
                                 (user_id, *await self._other_buckets(sale_id)))
        ticket = self._ticket(sale_id, user_id, answer)
        if ticket is None:
            raise NotFound("You have no ticket for this sale's waiting room: join first.")
        return ticket

    def pass_for(self, ticket: Ticket) -> str | None:
        if ticket.status != "admitted" or ticket.pass_expires_ms is None:
            return None
        return self.signer.sign(ticket.sale_id, ticket.user_id, ticket.pass_expires_ms)

    async def check_pass(self, sale_id: int, user_id: int, queue_pass: str | None) -> None:
        """Raise QueueRequired when the sale has a room and ``queue_pass`` is not this
        user's live pass for it; no Redis call once the sale's room is known."""
        if await self.config(sale_id) is not None:
            self.signer.check(queue_pass, sale_id=sale_id, user_id=user_id)

    async def pass_used(self, sale_id: int, user_id: int) -> None:
        """A pass holder reserved: the pass no longer counts against the stock margin
        (it still serves the holder's attempts until it expires)."""
        if await self.config(sale_id) is not None:
            await self.redis.zrem(room_keys(sale_id).fresh, user_id)

    # -- internals -----------------------------------------------------------------------
    async def _other_buckets(self, sale_id: int) -> tuple[int, int]:
        """Tokens and held units of a bucketed sale's buckets other than 0 (whose keys
        the room's scripts read themselves), read just before the script: the room
        follows the whole sale's stock. A reservation in another bucket between this read
        and the script can be counted once more as a free unit (its pass no longer counts
        as unused): passes may run ahead of the stock by the reservations of that moment.
        (0, 0) for a sale of one bucket, at no cost once the sale's room is known."""
        count = self._buckets.get(sale_id)
        if count is None:
            await self.config(sale_id)
            count = self._buckets.get(sale_id, 1)
        if count == 1:
            return 0, 0
        keys = all_keys(sale_id, count)[1:]
        tokens, held = await asyncio.gather(
            read_tokens(self.redis, keys),
            asyncio.gather(*(self.redis.hget(k.meta, "held") for k in keys)))
        return sum(tokens), sum(int(h or 0) for h in held)

    def _ticket(self, sale_id: int, user_id: int, answer: list) -> Ticket | None:
        tag = answer[0]
        if tag == b"no_room":
            raise NotFound("This sale has no waiting room.")
        if tag == b"rate_limited":
            raise RateLimited(retry_after=answer[1] / 1000)
        (_, status, arrival, position, expires, waiting, live, unused, admitted, measured,
         told, sold_out) = answer
        room = RoomFigures(waiting=waiting, passes_live=live, unused_passes=unused,
                           admitted=admitted,
                           measured_rate=None if measured < 0 else measured / 1000,
                           told_sold_out=told, sold_out=bool(sold_out))
        self._gauges.set(sale_id, room)
        if status == b"none":
            return None
        state = status.decode()
        return Ticket(ticket=f"{sale_id}-{arrival}", sale_id=sale_id, user_id=user_id,
                      status=state, position=position if state == "waiting" else None,
                      estimated_wait_seconds=room.estimate(position) if state == "waiting"
                      else (0 if state == "admitted" else None),
                      pass_expires_ms=expires or None, created=tag == b"new", room=room)


async def room_figures(redis: aioredis.Redis, sale_id: int) -> dict[str, Any] | None:
    """An operator's view of a sale's room, read without moving it; None without a room."""
    keys = room_keys(sale_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.room, "rate", "pass_ms", "margin", "aware", "admitted", "measured",
                   "told", "sold_out_ms")
        pipe.zcard(keys.waiting)
        pipe.zcount(keys.passes, int(time.time() * 1000), "+inf")
        pipe.zcount(keys.fresh, int(time.time() * 1000), "+inf")
        values, waiting, live, unused = await pipe.execute()
    if values[0] is None:
        return None
    config = RoomConfig.from_fields(dict(zip((b"rate", b"pass_ms", b"margin", b"aware"),
                                             values[:4], strict=True)))
    admitted, measured, told, sold_out = (int(v or 0) for v in values[4:])
    figures = RoomFigures(waiting=waiting, passes_live=live, unused_passes=unused,
                          admitted=admitted,
                          measured_rate=measured / 1000 if values[5] is not None
                          and measured >= 0 else None,
                          told_sold_out=told, sold_out=sold_out > 0)
    return {"admission_rate": config.admission_rate, "pass_seconds": config.pass_seconds,
            "pass_margin_percent": config.pass_margin_percent,
            "stock_aware": config.stock_aware, "waiting": figures.waiting,
            "admitted": figures.admitted, "passes_live": figures.passes_live,
            "unused_passes": figures.unused_passes, "told_sold_out": figures.told_sold_out,
            "sold_out": figures.sold_out, "measured_rate": figures.measured_rate,
            "estimated_wait_seconds": figures.estimate(figures.waiting)
            if figures.waiting else 0}


async def configure(redis: aioredis.Redis, sale_id: int, config: RoomConfig) -> None:
    """Write a sale's room configuration (before its tokens are loaded); idempotent."""
    await redis.hset(room_keys(sale_id).room, mapping=config.fields())
