"""The stream consumer: XREADGROUP in batches, one Postgres transaction per batch, XACK
after the commit (at-least-once delivery made exactly-once in effect by apply.py).

Entries left pending by a consumer that died are claimed with XAUTOCLAIM once they have
been idle for ``claim_idle_ms``. Streams are trimmed only below what the group has
acknowledged, which is never ahead of what Postgres has committed.

On a Redis Cluster one XREADGROUP cannot name streams of different slots (every sale has
its own hash tag, so its own slot): the read is one XREADGROUP per slot, all sent at once
as one pipeline per master, each with the same COUNT as the single call (so every stream
gets its share of a batch, as before); BLOCK cannot span them, so an idle round waits
``CLUSTER_POLL`` before the next. Group creation, claims, acks and trims name one stream
each and go to its master.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.codec import text
from engine.connections import is_cluster
from engine.errors import POSTGRES_BROKEN, POSTGRES_CONTENTION, REDIS_DOWN
from engine.events import SaleEvent
from engine.keys import ACTIVE_SALES, CONSUMER_GROUP, sale_keys, sale_streams, stream_bucket
from engine.settings import Settings
from reconciler import metrics
from reconciler.apply import BatchResult, apply_batch
from reconciler.deadletter import DeadLetter, apply_isolating, is_permanent, park, raw_json
from reconciler.streams import read_by_slot, trim_acknowledged

log = logging.getLogger("flashsale.reconciler")

CLUSTER_POLL = 0.05  # seconds an idle read round waits on a Redis Cluster (no BLOCK there)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Backoff:
    def __init__(self, first: float = 0.05, most: float = 5.0) -> None:
        self.first, self.most, self.delay = first, most, 0.0

    def reset(self) -> None:
        self.delay = 0.0

    async def wait(self) -> None:
        self.delay = min(self.most, max(self.first, self.delay * 2))
        await asyncio.sleep(self.delay)


class Consumer:
    def __init__(self, *, redis: aioredis.Redis, pool: asyncpg.Pool, settings: Settings,
                 name: str | None = None) -> None:
        self.redis = redis
        self.pool = pool
        self.settings = settings
        self.name = name or default_consumer_name()
        self.stopping = asyncio.Event()
        self.postgres_ok = True
        self.redis_ok = True
        self._groups: set[int] = set()  # sales whose streams' consumer groups exist
        self._known: dict[int, int] = {}  # sales Postgres has -> their bucket count
        self._reported: set[int] = set()  # sales Postgres lacks, already logged
        self._sales: list[int] = []
        self._sales_read_at = 0.0
        self._claim_cursor: dict[str, str] = {}  # stream -> XAUTOCLAIM cursor
        self._claimed_at = 0.0
        self._trimmed_at = 0.0
        # Of the batch in hand: raw fields per (sale, bucket, stream id), and entries that
        # could not be read at all (dead-lettered with the batch's commit).
        self._raw: dict[tuple[int, int, str], dict] = {}
        self._unreadable: list[DeadLetter] = []
        self._commits = 0

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                batch = await self._next_batch()
                self.redis_ok = True
            except (*REDIS_DOWN, *POSTGRES_BROKEN) as exc:
                redis_down = isinstance(exc, REDIS_DOWN)
                if redis_down:
                    self.redis_ok = False
                else:
                    self.postgres_ok = False
                    await self.pool.expire_connections()
                (metrics.REDIS_ERRORS if redis_down else metrics.POSTGRES_ERRORS).inc()
                log.warning("%s unavailable (%s); retrying",
                            "redis" if redis_down else "postgres", exc)
                await backoff.wait()
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                # The stream was deleted or recreated (Redis restarted, `sale recover`):
                # make the group again, from the new stream's first entry.
                log.info("stream or group vanished (%s); recreating", exc)
                self._groups.clear()
                self._sales_read_at = 0.0
                continue
            if (batch or self._unreadable) and await self._apply_until_committed(batch):
                self._commits += 1
                if self._commits == self.settings.fault_kill_after_commit:
                    log.warning("fault injection: SIGKILL after commit %d, before XACK",
                                self._commits)
                    os.kill(os.getpid(), signal.SIGKILL)
                await self._ack([*batch, *self._unreadable])
            backoff.reset()
            await self._housekeeping()

    async def _next_batch(self) -> list[SaleEvent]:
        self._raw.clear()
        self._unreadable.clear()
        sales = await self._active_sales()
        if not sales:
            await asyncio.sleep(self.settings.reconcile_block_ms / 1000)
            return []
        claimed = await self._claim_stale(sales)
        if claimed:
            return claimed
        streams = {stream: ">" for s in sales for stream in self.streams_of(s)}
        if is_cluster(self.redis):
            return self._events(await read_by_slot(
                self.redis, self.name, streams, count=self.settings.reconcile_batch,
                idle_wait=min(CLUSTER_POLL, self.settings.reconcile_block_ms / 1000)))
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, streams, count=self.settings.reconcile_batch,
            block=self.settings.reconcile_block_ms)
        return self._events(reply)

    async def _apply_until_committed(self, batch: list[SaleEvent]) -> bool:
        """Postgres down: keep the batch, do not ack, retry with backoff until it lands.
        False when told to stop first: the batch stays pending and is claimed later."""
        backoff = Backoff(first=0.1)
        isolate = False  # set once Postgres refused the batch's data: find the poison
        while True:
            try:
                started = time.perf_counter()
                letters = list(self._unreadable)
                async with self.pool.acquire() as conn, conn.transaction():
                    if isolate:
                        result, refused = await apply_isolating(conn, batch, self._raw)
                        letters += refused
                    else:
                        result = await apply_batch(conn, batch) if batch else BatchResult()
                    if letters:
                        await park(conn, letters)
                self.postgres_ok = True
                self._count(batch, result, letters)
                log.debug("applied %d events in %.1f ms", len(batch),
                          (time.perf_counter() - started) * 1000)
                return True
            except (*POSTGRES_BROKEN, *POSTGRES_CONTENTION) as exc:
                self.postgres_ok = False
                if isinstance(exc, POSTGRES_BROKEN):
                    await self.pool.expire_connections()
                metrics.POSTGRES_ERRORS.inc()
                log.warning("postgres write failed (%s); batch of %d kept, retrying",
                            type(exc).__name__, len(batch))
            except asyncpg.PostgresError as exc:
                metrics.POSTGRES_ERRORS.inc()
                if is_permanent(exc) and not isolate:
                    # The data of some event: find it, park it, apply the rest at once.
                    log.warning("batch of %d refused by Postgres (%s %s); isolating the "
                                "refused events", len(batch), exc.sqlstate, exc)
                    isolate = True
                    continue
                # Not an outage, and not ours to guess at: keep the batch unacknowledged,
                # say so loudly, and retry slowly rather than die and restart in a loop.
                log.exception("batch of %d rejected by Postgres; kept, retrying", len(batch))
            if self.stopping.is_set() and backoff.delay >= 1:
                return False
            await backoff.wait()

    @staticmethod
    def _count(batch: list[SaleEvent], result: BatchResult, letters: list[DeadLetter]) -> None:
        if batch:
            metrics.BATCH_SIZE.observe(len(batch))
        for kind, n in result.applied.items():
            metrics.EVENTS_APPLIED.labels(kind).inc(n)
        if result.conflicts:
            metrics.CONFLICTS.inc(result.conflicts)
            log.error("%d events name a reservation id Postgres knows with another owner; "
                      "recorded in sale_event_conflicts, not merged", result.conflicts)
        for letter in letters:
            metrics.DEAD_LETTERS.inc()
            log.error("sale %d entry %s parked in sale_dead_letters: %s", letter.sale_id,
                      letter.stream_id, letter.error)

    async def _ack(self, batch: list[SaleEvent | DeadLetter]) -> None:
        by_stream: dict[str, list[str]] = {}
        for event in batch:
            stream = sale_keys(event.sale_id, event.bucket).events
            by_stream.setdefault(stream, []).append(event.stream_id)
        backoff = Backoff()
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for stream, ids in by_stream.items():
                        pipe.xack(stream, CONSUMER_GROUP, *ids)
                    await pipe.execute()
                return
            except REDIS_DOWN:
                # Unacked entries would be re-delivered and re-applied harmlessly; still,
                # try again so they do not linger as pending.
                metrics.REDIS_ERRORS.inc()
                if self.stopping.is_set():
                    return
                await backoff.wait()

    # -- sales, groups, claims -----------------------------------------------------------
    async def _active_sales(self) -> list[int]:
        now = time.monotonic()
        if now - self._sales_read_at > 1.0:
            try:
                members = sorted(int(m) for m in await self.redis.smembers(ACTIVE_SALES))
            except REDIS_DOWN as exc:
                if not is_cluster(self.redis) or not self._sales_read_at:
                    raise
                # On a cluster the set lives on one master: while that one fails over,
                # the sales known go on being read from the others.
                log.warning("active sales not read (%s); reading the %d known",
                            exc, len(self._sales))
                self._sales_read_at = now
                return self._sales
            self._sales = await self._known_to_postgres(members)
            self._sales_read_at = now
            for sale_id in self._sales:
                if sale_id not in self._groups:
                    await self._ensure_group(sale_id)
        return self._sales

    async def _known_to_postgres(self, sale_ids: list[int]) -> list[int]:
        """Only sales Postgres knows are read: a sale active in Redis but absent from
        Postgres (Redis left over from another database) is left unread and reported,
        never applied half-way."""
        unknown = [s for s in sale_ids if s not in self._known]
        if unknown:
            found = {r["sale_id"]: r["buckets"] for r in await self.pool.fetch(
                "SELECT sale_id, buckets FROM flash_sales WHERE sale_id = ANY($1)", unknown)}
            self._known.update(found)
            for sale_id in set(unknown) - found.keys() - self._reported:
                log.warning("sale %d is active in Redis but unknown to Postgres; its events "
                            "are left unread (`flashsale audit` reports it)", sale_id)
                self._reported.add(sale_id)
        return [s for s in sale_ids if s in self._known]

    def streams_of(self, sale_id: int) -> tuple[str, ...]:
        """The sale's streams: one per bucket (engine/buckets.py), the count from
        Postgres."""
        return sale_streams(sale_id, self._known.get(sale_id, 1))

    async def _ensure_group(self, sale_id: int) -> None:
        for stream in self.streams_of(sale_id):
            try:
                # From the stream's first entry: nothing written before the group existed
                # is lost.
                await self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add(sale_id)

    async def _claim_stale(self, sales: list[int]) -> list[SaleEvent]:
        now = time.monotonic()
        if now - self._claimed_at < 1.0:
            return []
        self._claimed_at = now
        events: list[SaleEvent] = []
        for stream in (stream for sale_id in sales for stream in self.streams_of(sale_id)):
            cursor = self._claim_cursor.get(stream, "0-0")
            try:
                next_cursor, entries, *_ = await self.redis.xautoclaim(
                    stream, CONSUMER_GROUP, self.name,
                    min_idle_time=self.settings.claim_idle_ms, start_id=cursor,
                    count=self.settings.reconcile_batch)
            except REDIS_DOWN as exc:
                if not is_cluster(self.redis):
                    raise
                # A master failing over costs its own streams' claims, not the others'.
                log.warning("claims on %s skipped this round (%s)", stream, exc)
                continue
            self._claim_cursor[stream] = text(next_cursor)
            for stream_id, fields in entries:
                if fields:  # None: the entry was trimmed meanwhile (cannot happen below acks)
                    event = self._read(stream, stream_id, fields)
                    if event is not None:
                        events.append(event)
        if events:
            metrics.CLAIMED.inc(len(events))
            log.info("claimed %d stale entries from dead consumers", len(events))
        return events

    def _events(self, reply) -> list[SaleEvent]:
        events = []
        for stream, entries in reply or []:
            name = text(stream)
            for sid, fields in entries:
                event = self._read(name, sid, fields)
                if event is not None:
                    events.append(event)
        return events

    def _read(self, stream: str, stream_id: bytes | str, fields: dict) -> SaleEvent | None:
        """The entry of ``stream`` as an event, its raw fields kept for a dead letter; None
        (and a dead letter) when it cannot be read at all."""
        sid, (sale_id, bucket) = text(stream_id), stream_bucket(stream)
        self._raw[(sale_id, bucket, sid)] = fields
        try:
            return SaleEvent.from_stream(sale_id, sid, fields, bucket)
        except (ValueError, UnicodeDecodeError) as exc:
            self._unreadable.append(DeadLetter(sale_id, sid, raw_json(fields),
                                               f"unreadable entry: {type(exc).__name__}: {exc}",
                                               bucket=bucket))
            return None

    # -- trimming ------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._trimmed_at < 10.0:
            return
        self._trimmed_at = now
        try:
            for sale_id in self._sales:
                for stream in self.streams_of(sale_id):
                    await trim_acknowledged(self.redis, stream)
        except REDIS_DOWN:
            metrics.REDIS_ERRORS.inc()
