"""Driver failures from inside a call are outages (503 with the dependency), lost lock
fights are conflicts (409), neither is a bug (500)."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.errors import Conflict, Unavailable, as_contention, as_unavailable
from gateway.middleware import Edge


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


@pytest.mark.parametrize("exc", [
    asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
    asyncpg.DiskFullError("could not extend file: No space left on device"),
    asyncpg.OutOfMemoryError("out of memory"),
    asyncpg.ConfigurationLimitExceededError("out of shared memory"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.DatabaseDroppedError("database is being dropped"),
    asyncpg.PostgresIOError("could not read block"),
])
def test_a_postgres_refusing_for_now_is_a_503(exc) -> None:
    """Postgres up but unable to do the work for now (engine.errors.POSTGRES_REFUSING)."""
    outage = as_unavailable(exc)
    assert isinstance(outage, Unavailable) and outage.dependency == "postgres", exc


@pytest.mark.parametrize("text", [
    "LOADING Redis is loading the dataset in memory",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "READONLY You can't write against a read only replica.",
    "NOREPLICAS Not enough good replicas to write.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
])
def test_a_redis_refusing_for_now_is_a_503_whoever_parsed_it(text) -> None:
    """The same error reply parsed by the script batchers (errors.reply_error) and by
    redis-py with the engine's parser (connections.PARSER): an outage either way; a
    plain error reply (a bug of ours) stays one."""
    from engine.connections import PARSER
    from engine.errors import reply_error

    for exc in (reply_error(text), PARSER.parse_error(text)):
        outage = as_unavailable(exc)
        assert isinstance(outage, Unavailable) and outage.dependency == "redis", (text, exc)
    assert as_unavailable(reply_error("ERR wrong number of arguments")) is None
    assert as_unavailable(PARSER.parse_error("ERR wrong number of arguments")) is None


@pytest.mark.parametrize("exc", [
    asyncpg.DeadlockDetectedError("deadlock detected"),
    asyncpg.SerializationError("could not serialize access due to concurrent update"),
    asyncpg.LockNotAvailableError("canceling statement due to lock timeout"),
])
async def test_contention_outside_a_retried_transaction_is_a_409_not_a_500(exc,
                                                                          caplog) -> None:
    """Whatever route a lost lock fight escapes from, the edge answers 409 ``conflict``
    (retry it), in the contract's shape, and logs which error (no text); a programming
    error there is still a 500."""
    async def contended(request: web.Request) -> web.Response:
        raise exc

    async def broken(request: web.Request) -> web.Response:
        raise asyncpg.UniqueViolationError("duplicate key")

    app = web.Application()
    edge = Edge(app.router)
    edge.add("POST", "/contended", contended)
    edge.add("POST", "/broken", broken)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/contended")
        assert resp.status == 409
        body = await resp.json()
        assert body["error"]["code"] == "conflict" and "retry" in body["error"]["message"]
        assert (await client.post("/broken")).status == 500
    said = [r.getMessage() for r in caplog.records if "answered 409" in r.getMessage()]
    assert said == [f"/contended answered 409 ({type(exc).__name__}; the next such line in "
                    "10 s at the earliest)"], said
    assert isinstance(as_contention(exc), Conflict)
    assert as_unavailable(exc) is None
