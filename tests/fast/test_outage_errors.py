"""Driver failures from inside a call are outages (503 with the dependency), not bugs (500)."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions

from engine.errors import Unavailable, as_unavailable


@pytest.mark.parametrize("exc, dependency", [
    (asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
     "postgres"),
    (asyncpg.InternalClientError("unexpected protocol state"), "postgres"),
    (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
     "postgres"),
    (redis.exceptions.ConnectionError("Connection reset by peer"), "redis"),
])
def test_a_connection_lost_inside_a_call_is_a_503(exc, dependency) -> None:
    outage = as_unavailable(exc)
    assert isinstance(outage, Unavailable)
    assert outage.dependency == dependency and outage.retry_after >= 1


def test_a_programming_error_is_not_an_outage() -> None:
    assert as_unavailable(ValueError("bug")) is None
    assert as_unavailable(asyncpg.UniqueViolationError("duplicate key")) is None
