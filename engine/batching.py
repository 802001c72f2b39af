"""Auto-batching of script calls: the calls made in one event-loop turn go to Redis as one
pipeline.

No MULTI is needed: each script is atomic on its own, and the pipeline only saves round
trips. A call made alone is flushed on the next loop iteration (``call_soon``), not on a
timer, so batching adds no latency when there is nothing to batch with. Every caller gets
its own result or its own exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.scripts import Script

_Call = tuple[Script, Sequence[str], Sequence[Any], asyncio.Future]


class ScriptBatcher:
    def __init__(self, redis: aioredis.Redis, *, max_batch: int = 1000) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task] = set()

    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        elif len(self._pending) >= self._max_batch:
            self._flush()
        return future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.ensure_future(self._send(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, future = batch[0]
                result = await script(self._redis, keys, args)
                if not future.done():
                    future.set_result(result)
                return
            results = await self._pipeline(batch)
            missing = [call for call, result in zip(batch, results, strict=True)
                       if isinstance(result, NoScriptError)]
            if missing:  # Redis lost its script cache: load what is missing and resend once
                for script in {call[0] for call in missing}:
                    await script.load(self._redis)
                retried = dict(zip(map(id, missing), await self._pipeline(missing), strict=True))
                results = [retried.get(id(call), result)
                           for call, result in zip(batch, results, strict=True)]
        except BaseException as exc:  # an outage fails every caller of the batch
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def drain(self) -> None:
        """Wait for batches in flight (at shutdown)."""
        if self._scheduled:
            self._flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
