"""One Redis pub/sub channel followed for the life of a process.

Shared by the sold-out flags (``engine/refusals.py``) and the catalog caches
(``catalog/cache.py``): both keep state that only messages keep true, so both need the
same loop. It subscribes, calls ``on_subscribed`` (messages may have been missed while
not subscribed: start afresh), then ``on_message`` for each message in order; when the
subscription fails it calls ``on_lost`` and subscribes again after a pause that grows from
0.1 s to 5 s. It never dies of an error: the caller's TTLs are the fallback meanwhile.
``on_settled``, if given, runs once ``settle`` seconds into each subscription, between
two messages: a second look at what ``on_subscribed`` read, for a subscription made in a
failover's wake (below).

On a Redis Cluster a PUBLISH reaches the subscribers of every node, so the listener
subscribes on one node (the master of the channel name's slot; the client reads the slot
map first); when that node dies its connection fails, redis-py reads the map again, and
the listener subscribes on the slot's new master (the promoted replica) through the same
on_lost/on_subscribed steps (tests/test_cluster_service.py kills that master). A client
whose slot map predates the promotion can still name the old master; restarted by then
(as an operator does), it believes itself master for a moment, with the data it had
when it died and its cluster links not yet up, so what ``on_subscribed`` read there and
the messages published meanwhile can both be stale or missed; the node learns within a
second or two that it is a replica, which is what ``on_settled`` waits out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from engine.errors import REDIS_DOWN

log = logging.getLogger(__name__)


class ChannelListener:
    def __init__(self, redis: aioredis.Redis, channel: str, *, name: str,
                 on_message: Callable[[bytes | str], None],
                 on_subscribed: Callable[[], Awaitable[None]],
                 on_lost: Callable[[], None] = lambda: None,
                 on_settled: Callable[[], Awaitable[None]] | None = None,
                 settle: float = 3.0) -> None:
        self._redis = redis
        self.channel = channel
        self._name = name
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._on_settled = on_settled
        self._settle = settle
        self._task: asyncio.Task[None] | None = None
        # The flag as well as the cancellation: a cancel that lands while redis-py connects
        # can come back as a connection error.
        self._stopping = False

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            pubsub = None
            try:
                if isinstance(self._redis, aioredis.RedisCluster):
                    await self._redis.initialize()  # the slot map, once (no-op after)
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                await self._on_subscribed()
                backoff = 0.1
                settle_at = None if self._on_settled is None else (
                    time.monotonic() + self._settle)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
                    if settle_at is not None and time.monotonic() >= settle_at:
                        settle_at = None
                        await self._on_settled()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the listener die
                self._on_lost()
                if self._stopping:
                    break
                if not isinstance(exc, (*REDIS_DOWN, ConnectionError, OSError)):
                    log.exception("%s listener failed; restarting", self._name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._on_lost()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pubsub.aclose())
