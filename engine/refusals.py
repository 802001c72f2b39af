"""Refusals a gateway worker can give without Redis: a sold-out sale, a sale outside its
window.

Once a sale is sold out, every listening worker answers the sale's next attempts at once,
without running ``reserve.lua``, until tokens come back. On the channel named by
``engine.keys.tokens_returned_channel``, the admission that takes the last token publishes
``-<sale_id>`` (every worker raises the sale's flag) and every script that returns tokens
(``release.lua``, ``expire_holds.lua``) publishes ``<sale_id>`` (every worker drops it).
Messages on one channel arrive in the order the scripts ran, so a return always follows
the sell-out it undoes. A worker that subscribes reads which live sales are sold out
already, and a worker also raises the flag on a ``sold_out`` answer. A flag lapses after
``ttl`` seconds, the safety net for a message lost on the way. A sale answered
``not_active`` is refused the same way until its start (a scheduled sale) or for ``ttl``
(ended, paused, closed), whichever comes first; ``change_sale_state.lua`` publishes
``<sale_id>`` when a paused sale resumes, which drops that flag too.

A flag can only refuse, never admit, so it cannot oversell. Two rules keep it from
refusing longer than it should:

- It is trusted only while the listener is subscribed: messages missed while it was not
  are unknown, so every flag is dropped when it (re)subscribes and none is set meanwhile.
- A ``sold_out`` answer sets the flag only if the attempt was sent while subscribed and
  no token-return message for that sale arrived after it was sent: the pub/sub and the
  script connections are separate sockets, so the message can overtake the answer.

Replays: an attempt refused by a flag is not looked up by its idempotency key. A user
this worker admitted to the sale is never refused by a flag (the script answers, so a
retried request gets its hold back); a retry that lands on another worker while the sale
is sold out is answered ``sold_out``; the hold's unit goes back on sale when it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import redis.asyncio as aioredis

from engine.connections import db_of
from engine.errors import SaleNotActive, SoldOut
from engine.keys import ACTIVE_SALES, parse_bucket_name, sale_keys, tokens_returned_channel
from engine.pubsub import ChannelListener

log = logging.getLogger(__name__)


def channel_of(redis: aioredis.Redis | aioredis.RedisCluster) -> str:
    """The token-return channel of the server and db ``redis`` talks to (a cluster has
    only db 0; PUBLISH reaches the subscribers of every node)."""
    return tokens_returned_channel(db_of(redis))


class SaleRefusals:
    def __init__(self, redis: aioredis.Redis, *, channel: str, ttl: float = 1.0,
                 remember_buyers: int = 100_000) -> None:
        self._redis = redis
        self.channel = channel
        self.ttl = ttl
        # (sale id, bucket) -> monotonic deadline; bucket 0 of an unbucketed sale is the sale
        self._sold_out: dict[tuple[int, int], float] = {}
        self._inactive: dict[int, tuple[float, str]] = {}  # sale id -> (deadline, why)
        # (sale id, bucket) -> monotonic time of its last token-return message
        self._returned_at: dict[tuple[int, int], float] = {}
        self._buyers: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._remember_buyers = remember_buyers
        self._listener = ChannelListener(redis, channel, name="tokens-returned",
                                         on_message=self._heard,
                                         on_subscribed=self._subscribed, on_lost=self._lost,
                                         on_settled=self._seed)
        self.listening = False
        self._since = float("inf")  # when the listener last subscribed (monotonic)
        self.on_return = None  # optional callback(sale_id), for measurements

    # -- the hot path --------------------------------------------------------------------
    def check(self, sale_id: int, user_id: int, buckets: int = 1) -> None:
        """Raise the refusal a flag stands for; return when the script must answer. A sale
        split into buckets is refused as sold out only when every bucket is flagged."""
        if not self.listening:
            return
        if self._sold_out and (sale_id, user_id) not in self._buyers:
            now = time.monotonic()
            for bucket in range(buckets):
                deadline = self._sold_out.get((sale_id, bucket))
                if deadline is None:
                    break
                if now >= deadline:
                    del self._sold_out[(sale_id, bucket)]
                    break
            else:
                raise SoldOut(details={"sale_id": sale_id})
        inactive = self._inactive.get(sale_id)
        if inactive is not None:
            if time.monotonic() < inactive[0]:
                raise SaleNotActive(f"The sale is not active ({inactive[1]}).",
                                    details={"sale_id": sale_id, "reason": inactive[1]})
            del self._inactive[sale_id]

    # -- what the script answered --------------------------------------------------------
    def admitted(self, sale_id: int, user_id: int, *, tokens_left: int | None,
                 sent_at: float, bucket: int = 0) -> None:
        buyers = self._buyers
        buyers[(sale_id, user_id)] = None
        if len(buyers) > self._remember_buyers:
            buyers.popitem(last=False)
        if tokens_left == 0:
            self.sold_out(sale_id, sent_at=sent_at, bucket=bucket)

    def sold_out(self, sale_id: int, *, sent_at: float, bucket: int = 0) -> None:
        if (not self.listening or sent_at < self._since
                or self._returned_at.get((sale_id, bucket), 0.0) > sent_at):
            return
        self._sold_out[(sale_id, bucket)] = time.monotonic() + self.ttl

    def sold_out_heard(self, sale_id: int, bucket: int = 0) -> None:
        """The last token was taken: nothing returned before this message can be pending."""
        self._sold_out[(sale_id, bucket)] = time.monotonic() + self.ttl

    def not_active(self, sale_id: int, why: str, *, sent_at: float,
                   starts_in: float | None = None) -> None:
        """``starts_in``: seconds from the script run until a scheduled sale opens (Redis
        clock). Counted from when the attempt was sent, which is before the script ran, so
        the flag lapses no later than the sale opens."""
        if (not self.listening or sent_at < self._since
                or self._returned_at.get((sale_id, 0), 0.0) > sent_at):
            return
        hold_for = self.ttl if starts_in is None else max(0.0, min(self.ttl, starts_in))
        self._inactive[sale_id] = (sent_at + hold_for, why)

    def tokens_returned(self, sale_id: int, bucket: int = 0) -> None:
        """Tokens came back to a bucket, or a paused sale resumed: it may admit again."""
        now = time.monotonic()
        self._returned_at[(sale_id, bucket)] = now
        self._sold_out.pop((sale_id, bucket), None)
        if bucket == 0:
            self._inactive.pop(sale_id, None)
        if len(self._returned_at) > 10_000:  # old sales: nothing in flight is that old
            cutoff = now - 60.0
            self._returned_at = {s: t for s, t in self._returned_at.items() if t > cutoff}
        if self.on_return is not None:
            self.on_return(sale_id)

    def forget(self) -> None:
        self._sold_out.clear()
        self._inactive.clear()

    # -- the listener --------------------------------------------------------------------
    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        self._lost()
        await self._listener.stop()

    async def wait_listening(self, timeout: float = 5.0) -> bool:
        """For tests and benchmarks: True once the listener is subscribed."""
        deadline = time.monotonic() + timeout
        while not self.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self.listening

    async def _seed(self) -> None:
        """Raise the flags of the live sales already sold out when this worker subscribed
        (it missed their sell-out messages): one read of the active set and of each
        sale's tokens. Runs before ``listening`` is set, while the messages published
        since the subscription wait in order: a token returned meanwhile is read next and
        drops the flag. Runs again a few seconds into the subscription (``on_settled``,
        between two messages, so the same holds): a read made right after a failover can
        have reached the old master, back for a moment with the data it died with."""
        asked_at = time.monotonic()
        sales = [int(s) for s in await self._redis.smembers(ACTIVE_SALES)]
        if not sales:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for sale_id in sales:
                pipe.hget(sale_keys(sale_id).meta, "buckets")
            counts = await pipe.execute()
        buckets = [(sale_id, b) for sale_id, count in zip(sales, counts, strict=True)
                   for b in range(int(count or 1))]
        async with self._redis.pipeline(transaction=False) as pipe:
            for sale_id, b in buckets:
                pipe.hget(sale_keys(sale_id, b).meta, "tokens")
            tokens = await pipe.execute()
        for bucket, left in zip(buckets, tokens, strict=True):
            if left is not None and int(left) <= 0:
                self._sold_out[bucket] = asked_at + self.ttl

    async def _subscribed(self) -> None:
        self.forget()  # messages may have been missed while not subscribed
        self._since = time.monotonic()
        await self._seed()
        self.listening = True  # messages that came meanwhile are read next, in order

    def _heard(self, data: bytes | str) -> None:
        """``<bucket name>``: tokens returned; ``-<bucket name>``: its last token taken."""
        message = data.decode("ascii", "replace") if isinstance(data, bytes) else data
        taken = message.startswith("-")
        found = parse_bucket_name(message[1:] if taken else message)
        if found is None:
            return
        if taken:
            self.sold_out_heard(*found)
        else:
            self.tokens_returned(*found)

    def _lost(self) -> None:
        """Flags are trusted only while subscribed."""
        self.listening = False
        self.forget()
