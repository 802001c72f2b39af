"""Transactions that may meet lock contention: retried a few times on a deadlock or a
serialization failure, then answered 409 ``conflict`` (never a 500)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from engine.errors import Conflict

T = TypeVar("T")
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def retrying(unit: Callable[[], Awaitable[T]], *, attempts: int = 4) -> T:
    """Run ``unit`` (one whole transaction) again when Postgres chose it as a deadlock
    victim or could not serialize it."""
    for attempt in range(attempts):
        try:
            return await unit()
        except RETRYABLE as exc:
            if attempt == attempts - 1:
                raise Conflict("The request met heavy contention; retry it.") from exc
            await asyncio.sleep(0.005 * 2 ** attempt)
    raise AssertionError("unreachable")
