"""Transactions that may meet lock contention (engine.errors.POSTGRES_CONTENTION: a
deadlock, a serialization failure, a lock timeout): retried a few times, then answered
409 ``conflict`` (never a 500)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from engine.errors import CONTENTION_MESSAGE, POSTGRES_CONTENTION, Conflict

T = TypeVar("T")


async def retrying(unit: Callable[[], Awaitable[T]], *, attempts: int = 4) -> T:
    """Run ``unit`` (one whole transaction) again when Postgres chose it as a deadlock
    victim or could not serialize it."""
    for attempt in range(attempts):
        try:
            return await unit()
        except POSTGRES_CONTENTION as exc:
            if attempt == attempts - 1:
                raise Conflict(CONTENTION_MESSAGE) from exc
            await asyncio.sleep(0.005 * 2 ** attempt)
    raise AssertionError("unreachable")
