"""engine.connections.probe_all, the readiness probes of the gateway and the reconciler:
cancelled (a shutdown), it ends only after every probe has. A probe left running used
the Redis client its owner closed next, and redis-py reconnected it: an open socket
nobody closed (the ResourceWarning at the end of the test runs)."""

from __future__ import annotations

import asyncio

import pytest

from engine.connections import probe_all

pytestmark = pytest.mark.fast


async def test_each_probe_answers_fails_or_runs_out_of_time() -> None:
    async def ok() -> None:
        pass

    async def broken() -> None:
        raise ConnectionError("refused")

    async def silent() -> None:
        await asyncio.sleep(10)

    assert await probe_all({"a": ok, "b": broken, "c": silent}, 0.05) == {
        "a": True, "b": False, "c": False}


async def test_cancelled_it_returns_only_after_every_probe_has_ended() -> None:
    """The Postgres probe ends at once when cancelled; the Redis one, like a redis-py
    ping that is connecting, takes a moment more. Cancelling the caller must not leave
    it running behind the caller's back."""
    running: set[str] = set()
    started = asyncio.Event()

    async def quick() -> None:
        running.add("postgres")
        try:
            await asyncio.sleep(10)
        finally:
            running.discard("postgres")

    async def slow_to_stop() -> None:
        running.add("redis")
        started.set()
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)  # finishing its connect
            running.discard("redis")

    caller = asyncio.create_task(probe_all({"postgres": quick, "redis": slow_to_stop}, 5))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert running == set()
