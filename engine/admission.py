"""Admission: reserve, release, confirm and expire holds through the Lua scripts.

This is the hot path. It touches Redis only, with one script call per operation
(auto-batched with concurrent calls; the reservation attempts on one sale in one loop
turn decided by one run of reserve.lua, engine/coalesce.py), and turns each script's
answer into a typed result or a typed error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine import metrics
from engine.bucket_router import BucketRouter
from engine.buckets import STEAL_ROUNDS, home_bucket
from engine.cluster import batcher_beside
from engine.codec import text
from engine.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidTransition,
    NotFound,
    PurchaseLimitExceeded,
    RateLimited,
    ReservationExpired,
    SaleNotActive,
    SoldOut,
    Unavailable,
    ValidationFailed,
)
from engine.keys import bucket_of_reservation, sale_keys
from engine.records import ReservationRecord, State
from engine.refusals import SaleRefusals, channel_of
from engine.scripts import SCRIPTS, Scripts

log = logging.getLogger("flashsale.admission")


class Hold(msgspec.Struct, frozen=True):
    """A hold as a script answered it (a frozen msgspec struct: built on every
    reservation, it costs a fifth of a frozen dataclass)."""

    reservation_id: str
    sale_id: int
    quantity: int
    status: State
    expires_ms: int
    user_id: int | None = None
    order_id: int | None = None
    replayed: bool = False

    @property
    def expires_at(self) -> datetime:
        global _LAST_EXPIRY
        last = _LAST_EXPIRY  # the holds of one script run share their expiry
        if last[0] != self.expires_ms:
            last = _LAST_EXPIRY = (self.expires_ms,
                                   datetime.fromtimestamp(self.expires_ms / 1000, UTC))
        return last[1]


_LAST_EXPIRY: tuple[int, datetime] = (-1, datetime.fromtimestamp(0, UTC))


# Outcomes and latency counted in plain ints between scrapes (engine.metrics tallies).
_OUTCOMES = metrics.CounterTally(metrics.ADMISSIONS)
_LATENCY = metrics.HistogramTally(metrics.RESERVATION_LATENCY, metrics.LATENCY_BUCKETS)


def old_layout(sale_id: int) -> Unavailable:
    """A sale still in the key layout of before the lean gate (README: upgrading): 503,
    and the log says what the operator runs."""
    return Unavailable(f"Sale {sale_id} is in the Redis key layout of before this version; "
                       f"an operator moves it with `flashsale sale recover --force {sale_id}`.",
                       dependency="redis")


class Admission:
    def __init__(self, redis: aioredis.Redis, *, rate_limit: int = 0, batching: bool = True,
                 scripts: Scripts = SCRIPTS, refusal_ttl: float = 1.0,
                 wait_replicas: int = 0, wait_timeout: float = 1.0) -> None:
        if wait_replicas and not batching:
            raise ValueError("wait_replicas needs the batched path: WAIT must follow the "
                             "script on its own connection")
        self.redis = redis
        self.wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, int(wait_timeout * 1000))
        self.scripts = scripts
        self.rate_limit = rate_limit
        self._batcher = batcher_beside(redis) if batching else None
        self.channel = channel_of(redis)
        # Answers without Redis for sold-out and inactive sales once start() has run.
        self.refusals = SaleRefusals(redis, channel=self.channel, ttl=refusal_ttl)
        # Sales split into buckets: bucket counts, transfers for empty home buckets.
        self.buckets = BucketRouter(redis, run=self._run, scripts=scripts, channel=self.channel,
                                    batcher=self._batcher,
                                    wait_timeout_ms=self._wait_timeout_ms)
        self.steals = 0  # transfers this process made for buyers whose bucket was empty

    def _run(self, script, keys, args) -> Awaitable:
        """The script's answer, to be awaited (the batcher's future: no coroutine)."""
        if self._batcher is not None:
            return self._batcher.call(script, keys, args)
        if script.batch is not None:
            return self._alone(script, keys, args)
        return script(self.redis, keys, args)

    async def _alone(self, script, keys, args) -> list:
        """A batchable script (reserve.lua) run for one attempt: its one answer."""
        return (await script(self.redis, keys, args))[0]

    async def _replicated(self, key: str) -> None:
        """Answer a hold only once ``wait_replicas`` replicas have it (WAIT after the
        script, on its connection). Fewer in time: 503, and the client's retry with the
        same key replays the hold and waits again."""
        acked = await self._batcher.wait_replicas(key, self.wait_replicas,
                                                  self._wait_timeout_ms)
        if acked < self.wait_replicas:
            raise RedisTimeoutError(
                f"the hold reached {acked} of {self.wait_replicas} Redis replicas in time")

    async def start(self) -> None:
        """Listen for returned tokens, so sold-out and inactive sales are refused without
        a script run (engine/refusals.py). Without it every attempt runs the script."""
        await self.refusals.start()

    async def close(self) -> None:
        await self.refusals.stop()
        if self._batcher is not None:
            await self._batcher.drain()

    # -- reserve -------------------------------------------------------------------------
    async def reserve(self, sale_id: int, user_id: int, quantity: int, idempotency_key: str,
                      *, client: str = "") -> Hold:
        started = time.perf_counter()
        outcome = "error"
        try:
            buckets = self.buckets.known(sale_id) or await self.buckets.count(sale_id)
            self.refusals.check(sale_id, user_id, buckets)
            sent_at = time.monotonic()
            keys = sale_keys(sale_id, home_bucket(user_id, buckets))
            args = (keys.name, self.rate_limit, self.channel,
                    user_id, quantity, idempotency_key, client)
            answer = await self._run(self.scripts.reserve, keys.for_reserve, args)
            rounds = 0
            while answer[0] == b"sold_out" and buckets > 1 and rounds < STEAL_ROUNDS:
                # The home bucket is empty: bring tokens from the richest bucket, retry.
                rounds += 1
                moved, seen = await self.buckets.steal(sale_id, buckets, keys.bucket, sent_at)
                if not moved:  # every bucket read empty (after this attempt was sent)
                    for bucket, left in enumerate(seen):
                        if left <= 0:
                            self.refusals.sold_out(sale_id, sent_at=sent_at, bucket=bucket)
                    break
                self.steals += 1
                sent_at = time.monotonic()
                answer = await self._run(self.scripts.reserve, keys.for_reserve, args)
            if self.wait_replicas and answer[0] in (b"ok", b"replay"):
                await self._replicated(keys.meta)
            outcome, hold = self._reserve_answer(sale_id, user_id, answer, sent_at,
                                                 keys.bucket)
            return hold
        except (SoldOut, SaleNotActive, PurchaseLimitExceeded, RateLimited, NotFound,
                IdempotencyKeyReused, ValidationFailed) as exc:
            outcome = _OUTCOME_OF.get(type(exc), "error")
            raise
        finally:
            _OUTCOMES.inc((outcome,))
            _LATENCY.observe((), time.perf_counter() - started)

    def _reserve_answer(self, sale_id: int, user_id: int, answer: list,
                        sent_at: float, bucket: int) -> tuple[str, Hold]:
        tag = answer[0]
        if tag == b"ok" or tag == b"replay":
            hold = Hold(reservation_id=text(answer[1]), sale_id=sale_id, quantity=answer[2],
                        status=text(answer[4]), expires_ms=answer[3], user_id=user_id,
                        replayed=tag == b"replay")
            if tag == b"ok":
                self.refusals.admitted(sale_id, user_id, sent_at=sent_at, bucket=bucket,
                                       tokens_left=answer[5] if len(answer) > 5 else None)
                return "admitted", hold
            return "replayed", hold
        if tag == b"sold_out":
            self.refusals.sold_out(sale_id, sent_at=sent_at, bucket=bucket)
            raise SoldOut(details={"sale_id": sale_id})
        if tag == b"not_active":
            why = text(answer[1])
            self.refusals.not_active(sale_id, why, sent_at=sent_at,
                                     starts_in=answer[2] / 1000 if len(answer) > 2 else None)
            raise SaleNotActive(f"The sale is not active ({why}).",
                                details={"sale_id": sale_id, "reason": why})
        if tag == b"limit":
            raise PurchaseLimitExceeded(
                f"The limit is {answer[2]} per buyer and you already have {answer[1]}.",
                details={"per_user_limit": answer[2], "already": answer[1]})
        if tag == b"bad_quantity":
            raise ValidationFailed.at("$.quantity", f"must be between 1 and {answer[1]}")
        if tag == b"rate_limited":
            raise RateLimited(retry_after=answer[1] / 1000)
        if tag == b"idem_reused":
            raise IdempotencyKeyReused()
        if tag == b"no_sale":
            raise NotFound("No such sale.")
        if tag == b"old_layout":
            raise old_layout(sale_id)
        raise RuntimeError(f"reserve.lua answered {answer!r}")

    # -- release, confirm, expire --------------------------------------------------------
    async def release(self, reservation_id: str, *, user_id: int | None,
                      include_confirmed: bool = False, reason: str = "cancelled") -> Hold:
        keys = self._keys_of(reservation_id)
        sale_id = keys.sale_id
        answer = await self._run(
            self.scripts.release, keys.for_release,
            (reservation_id, "" if user_id is None else user_id,
             "1" if include_confirmed else "0", reason, self.channel, keys.name))
        tag = answer[0]
        if tag == b"ok":
            return Hold(reservation_id=reservation_id, sale_id=sale_id, quantity=answer[2],
                        status=text(answer[1]), expires_ms=answer[3], user_id=user_id)
        if tag == b"invalid":
            raise InvalidTransition("A confirmed reservation is released by cancelling its order.")
        if tag == b"old_layout":
            raise old_layout(sale_id)
        raise NotFound("No such reservation.")

    async def confirm(self, reservation_id: str, *, user_id: int, order_id: int) -> Hold:
        keys = self._keys_of(reservation_id)
        sale_id = keys.sale_id
        answer = await self._run(self.scripts.confirm, keys.for_confirm,
                                 (reservation_id, user_id, order_id))
        tag = answer[0]
        if tag == b"ok":
            return Hold(reservation_id=reservation_id, sale_id=sale_id, quantity=answer[1],
                        status="confirmed", expires_ms=answer[2], user_id=user_id,
                        order_id=order_id)
        if tag == b"expired":
            raise ReservationExpired()
        if tag == b"released":
            raise InvalidTransition("The reservation was released.")
        if tag == b"conflict":
            raise Conflict("The reservation is already confirmed for another order.")
        raise NotFound("No such reservation.")

    async def expire_due(self, sale_id: int, *, limit: int = 500,
                         bucket: int = 0) -> tuple[int, int, int]:
        """Return up to ``limit`` due holds of a sale's bucket to stock:
        (holds expired, units returned, holds still due)."""
        keys = sale_keys(sale_id, bucket)
        answer = await self.scripts.expire_holds(
            self.redis, keys.for_expire, (limit, self.channel, keys.name))
        if len(answer) > 3:  # the sale's other work goes on; its holds wait for the move
            log.error("%s", old_layout(sale_id))
        expired, units, left = answer[:3]
        return expired, units, left

    # -- reads ---------------------------------------------------------------------------
    async def get(self, reservation_id: str) -> Hold | None:
        """The reservation as Redis knows it, or None (unknown, or its sale was cleaned up).
        A hold past its expiry reads ``expired`` even before the sweeper returns it."""
        found = bucket_of_reservation(reservation_id)
        if found is None:
            return None
        sale_id = found[0]
        raw = await self.redis.hget(sale_keys(*found).res, reservation_id)
        if raw is None:
            return None
        record = ReservationRecord.parse(raw)
        status = record.state
        if status == "held" and record.expires_ms <= time.time() * 1000:
            status = "expired"
        return Hold(reservation_id=reservation_id, sale_id=sale_id, quantity=record.quantity,
                    status=status, expires_ms=record.expires_ms, user_id=record.user_id,
                    order_id=record.order_id)

    @staticmethod
    def _keys_of(reservation_id: str):
        """The keys of the bucket that issued the reservation (named in its id)."""
        found = bucket_of_reservation(reservation_id)
        if found is None:
            raise NotFound("No such reservation.")
        return sale_keys(*found)


_OUTCOME_OF = {
    SoldOut: "sold_out", SaleNotActive: "sale_not_active",
    PurchaseLimitExceeded: "purchase_limit_exceeded", RateLimited: "rate_limited",
    NotFound: "not_found", IdempotencyKeyReused: "idempotency_key_reused",
    ValidationFailed: "invalid",
}
