"""A gateway process's side of hot-product buckets (engine/buckets.py): each sale's bucket
count, read once; one transfer in flight per empty home bucket, shared by the attempts
that found it empty; and the WAIT that makes each step of a transfer durable before the
next one (``buckets.move`` says why)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis

from engine import metrics
from engine.buckets import Run, bucket_count, replicated, replication, steal
from engine.scripts import Scripts


class BucketRouter:
    def __init__(self, redis: aioredis.Redis, *, run: Run, scripts: Scripts, channel: str,
                 batcher: Any | None, wait_timeout_ms: int) -> None:
        self.redis = redis
        self._run = run
        self._scripts = scripts
        self._channel = channel
        self._batcher = batcher
        self._wait_timeout_ms = wait_timeout_ms
        self._counts: dict[int, int] = {}  # sale id -> its bucket count (fixed for life)
        self._asking: dict[int, asyncio.Future] = {}  # one read of it at a time per sale
        self._replicas: dict[str, tuple[int, float]] = {}  # master -> (replicas, until)
        # (sale, bucket) -> (when it started, the transfer in flight to that bucket)
        self._stealing: dict[tuple[int, int], tuple[float, asyncio.Future]] = {}

    # -- bucket counts -------------------------------------------------------------------
    def known(self, sale_id: int) -> int | None:
        return self._counts.get(sale_id)

    async def count(self, sale_id: int) -> int:
        """The sale's bucket count, read once per process (1 while Redis has no such sale:
        the script then answers no_sale). Concurrent first attempts share one read."""
        asking = self._asking.get(sale_id)
        if asking is not None:
            return await asyncio.shield(asking)
        asking = self._asking[sale_id] = asyncio.get_running_loop().create_future()
        try:
            count = await bucket_count(self.redis, sale_id)
        except Exception as exc:
            asking.set_exception(exc)
            asking.exception()  # retrieved: nobody else may be waiting
            raise
        except BaseException:  # cancelled: the others ask again
            asking.cancel()
            raise
        finally:
            del self._asking[sale_id]
        if count is not None:
            if len(self._counts) > 100_000:
                self._counts.clear()
            self._counts[sale_id] = count
        asking.set_result(count or 1)
        return count or 1

    # -- transfers to an empty home bucket -----------------------------------------------
    async def steal(self, sale_id: int, buckets: int, home: int,
                    sent_at: float) -> tuple[int, list[int]]:
        """One transfer to ``home`` at a time per bucket and process: the attempts that
        found it empty share the transfer in flight (no stampede of transfers and reads
        when a bucket runs dry under load), if it started after their attempt was sent
        (an older one read the buckets before this attempt's answer: wait for it, then
        start or join a fresh one). Returns ``buckets.steal``'s answer."""
        key = (sale_id, home)
        for _ in range(2):
            started, running = self._stealing.get(key, (0.0, None))
            if running is None:
                started = time.monotonic()
                running = asyncio.ensure_future(
                    steal(self._run, sale_id, buckets, home, channel=self._channel,
                          redis=self.redis, scripts=self._scripts, durable=self.durable))
                self._stealing[key] = (started, running)
                running.add_done_callback(lambda done: self._stolen(key, done))
            if started >= sent_at:
                break
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        return await asyncio.shield(running)

    def _stolen(self, key: tuple[int, int], done: asyncio.Future) -> None:
        if self._stealing.get(key, (0.0, None))[1] is done:
            del self._stealing[key]
        if not done.cancelled() and done.exception() is None:
            metrics.BUCKET_STEALS.labels("yes" if done.result()[0] else "no").inc()

    # -- durability of a transfer's steps ------------------------------------------------
    async def durable(self, key: str) -> bool:
        """True once the replicas of the master serving ``key`` have this process's writes
        there: WAIT for all of them on the batcher's connection that carried the step (or,
        unbatched, until they acknowledge the master's offset); no replica, no wait."""
        count = await self._replica_count(key)
        if count == 0:
            return True
        if self._batcher is None:
            return await replicated(self.redis, key)
        return await self._batcher.wait_replicas(key, count, self._wait_timeout_ms) >= count

    async def _replica_count(self, key: str) -> int:
        """How many replicas the master serving ``key`` has (INFO, kept for 5 seconds)."""
        node = (self.redis.get_node_from_key(key).name
                if isinstance(self.redis, aioredis.RedisCluster) else "")
        known = self._replicas.get(node)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        count = int((await replication(self.redis, key)).get("connected_slaves") or 0)
        self._replicas[node] = (count, time.monotonic() + 5.0)
        return count
