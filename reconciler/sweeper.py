"""The hold-expiry sweeper and the closing of finished sales.

Every ``sweep_interval`` seconds, each active sale's due holds go back to stock through
``expire_holds.lua`` (atomic and idempotent, so several reconcilers may sweep at once),
in every bucket of a sale split into buckets, and every transfer between buckets a crash
left half-done is finished (engine/buckets.py: idempotent too).
A sale past its end, with no live hold and every event applied, is closed: its unsold
units return to the product's regular stock in Postgres and it leaves the active set.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import redis.asyncio as aioredis

from engine.admission import Admission
from engine.buckets import all_keys, complete_moves, read_tokens
from engine.errors import POSTGRES_DOWN, REDIS_DOWN
from engine.keys import ACTIVE_SALES, sale_keys
from engine.sales import Sales
from reconciler import metrics
from reconciler.board import RedisBooks, mismatch_units, redis_books
from reconciler.lag import Lag, stream_lag

log = logging.getLogger("flashsale.sweeper")


class Sweeper:
    def __init__(self, *, redis: aioredis.Redis, pool: asyncpg.Pool, interval: float,
                 stopping: asyncio.Event) -> None:
        self.redis = redis
        self.pool = pool
        self.interval = interval
        self.stopping = stopping
        self.admission = Admission(redis, batching=False)
        self._sales = Sales(pool=pool, redis=redis)

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.sweep_once()
            except (*REDIS_DOWN, *POSTGRES_DOWN, asyncpg.InterfaceError,
                    asyncpg.InternalClientError) as exc:  # see consumer.POSTGRES_BROKEN
                log.warning("sweep skipped: %s", exc)
                if not isinstance(exc, REDIS_DOWN):
                    await self.pool.expire_connections()
            try:
                await asyncio.wait_for(self.stopping.wait(), self.interval)
            except TimeoutError:
                pass

    async def sweep_once(self) -> int:
        """Expire due holds of every active sale, publish its gauges (lag read once per
        sale per sweep), and close the sales that are finished."""
        expired_total = 0
        oldest = 0.0
        books: dict[int, RedisBooks | None] = {}
        for member in await self.redis.smembers(ACTIVE_SALES):
            sale_id = int(member)
            buckets = await self._sales.bucket_count(sale_id)
            for bucket in range(buckets):
                while True:
                    expired, _units, left = await self.admission.expire_due(
                        sale_id, limit=500, bucket=bucket)
                    expired_total += expired
                    if not left:
                        break
            if buckets > 1:
                finished = await complete_moves(self.redis, sale_id, buckets,
                                                channel=self.admission.channel)
                if finished:
                    log.info("sale %d: %d transfers between buckets finished after a crash",
                             sale_id, finished)
            lag = await stream_lag(self.redis, sale_id, buckets)
            oldest = max(oldest, lag.oldest_age_seconds)
            books[sale_id] = await redis_books(self._sales, sale_id)
            holds = await self._publish_gauges(sale_id, lag, buckets)
            if not holds and not lag.pending:  # live holds may still be paid; events in flight
                try:
                    if await self.close_if_finished(sale_id):
                        books.pop(sale_id)
                except POSTGRES_DOWN as exc:  # closed on a later sweep; go on with the rest
                    log.warning("sale %d not closed yet: %s", sale_id, exc)
        metrics.OLDEST_PENDING_AGE.set(oldest)
        if expired_total:
            metrics.HOLDS_EXPIRED.inc(expired_total)
        try:  # Postgres's side of the gauges; a Postgres outage must not stop the sweep's
            await self._publish_books(books)
            await self._publish_backlogs()
        except POSTGRES_DOWN as exc:
            log.debug("books and backlog gauges not refreshed: %s", exc)
        metrics.LAST_SWEEP.set_to_current_time()
        return expired_total

    async def _publish_gauges(self, sale_id: int, lag: Lag, buckets: int = 1) -> int:
        """Set the sale's gauges (sums over its buckets); returns its live holds."""
        keys = all_keys(sale_id, buckets)
        tokens, *each = await asyncio.gather(read_tokens(self.redis, keys),
                                             *(self.redis.zcard(k.holds) for k in keys))
        holds = sum(each)
        label = str(sale_id)
        metrics.TOKENS_REMAINING.labels(label).set(sum(tokens))
        metrics.HOLDS_LIVE.labels(label).set(holds)
        metrics.PENDING_ENTRIES.labels(label).set(lag.pending)
        return holds

    async def _publish_books(self, books: dict[int, RedisBooks | None]) -> None:
        """The books-mismatch gauge of each live sale. Postgres is read after Redis (one
        query for all sales), so it is compared at Redis's stream point or not at all."""
        if not books:
            return
        rows = {r["sale_id"]: r for r in await self.pool.fetch(
            "SELECT sale_id, quantity, status, held_qty, confirmed_qty, last_stream_id,"
            " bucket_stream_ids, created_at FROM flash_sales WHERE sale_id = ANY($1)",
            list(books))}
        for sale_id, redis_side in books.items():
            row = rows.get(sale_id)
            if row is None:  # in Redis, unknown to Postgres: the consumer reports it
                continue
            metrics.BOOKS_MISMATCH.labels(str(sale_id)).set(mismatch_units(row, redis_side))

    async def _publish_backlogs(self) -> None:
        """What waits for someone: undelivered notifications, parked (dead-lettered) sale
        events no operator has resolved (counted once the migrations that made their table
        and its resolution have run)."""
        backlog, oldest, parked = await self.pool.fetchrow(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0),"
            " EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'resolved_at'"
            " AND attrelid = to_regclass('sale_dead_letters'))"
            " FROM outbox WHERE delivered_at IS NULL")
        metrics.OUTBOX_BACKLOG.set(backlog)
        metrics.OUTBOX_OLDEST_AGE.set(float(oldest))
        if parked:
            metrics.DEAD_LETTERS_PARKED.set(await self.pool.fetchval(
                "SELECT count(*) FROM sale_dead_letters WHERE resolved_at IS NULL"))

    async def close_if_finished(self, sale_id: int) -> bool:
        """Close a sale past its end (the caller has seen no live hold and no lag)."""
        keys = sale_keys(sale_id)
        ends_ms, state = await self.redis.hmget(keys.meta, "ends_ms", "state")
        if state is None or not int(ends_ms or 0) or time.time() * 1000 < int(ends_ms):
            return False
        async with self.pool.acquire() as conn, conn.transaction():
            sale = await conn.fetchrow(
                "SELECT product_id, quantity, held_qty, confirmed_qty, status FROM flash_sales"
                " WHERE sale_id = $1 FOR UPDATE", sale_id)
            if sale is None:
                return False
            if sale["status"] == "ready":
                unsold = sale["quantity"] - sale["confirmed_qty"] - sale["held_qty"]
                await conn.execute(
                    "UPDATE inventory SET available_qty = available_qty + $2,"
                    " version = version + 1, updated_at = now() WHERE product_id = $1",
                    sale["product_id"], unsold)
                await conn.execute(
                    "UPDATE flash_sales SET status = 'closed' WHERE sale_id = $1", sale_id)
                log.info("sale %d closed: %d unsold units back in stock", sale_id, unsold)
        for bucket in all_keys(sale_id, await self._sales.bucket_count(sale_id)):
            await self.redis.hset(bucket.meta, "state", "closed")
        await self.redis.srem(ACTIVE_SALES, sale_id)
        forget_sale(sale_id)
        return True


def forget_sale(sale_id: int) -> None:
    """Drop a closed sale's series: a gauge of a sale that no longer runs only misleads."""
    for gauge in metrics.PER_SALE:
        try:
            gauge.remove(str(sale_id))
        except KeyError:  # never published by this process
            pass
