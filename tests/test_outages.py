"""A dead Redis or Postgres gets a quick 503 with Retry-After, and the service recovers by
itself when it returns. The outage is staged with a TCP proxy that the test cuts."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from engine.admission import Admission
from engine.connections import create_redis
from gateway.app import create_app
from gateway.context import SERVICES
from tests.conftest import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    Api,
    GatewayServer,
    assert_error,
    make_settings,
)
from tests.proxy import TcpProxy


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    return url.replace(parts.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}")


async def _proxy_in_front_of(url: str, default_port: int):
    parts = urlsplit(url)
    proxy = await TcpProxy(parts.hostname, parts.port or default_port).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def redis_proxy():
    async for proxy in _proxy_in_front_of(TEST_REDIS_URL, 6379):
        yield proxy


@pytest.fixture
async def pg_proxy():
    async for proxy in _proxy_in_front_of(TEST_DATABASE_URL, 5432):
        yield proxy


async def _timed(api: Api, method: str, path: str, **kw) -> tuple[int, object, float, dict]:
    started = time.perf_counter()
    resp = await api.client.request(method, path, **kw)
    body = await resp.json()
    return resp.status, body, time.perf_counter() - started, dict(resp.headers)


async def test_redis_down_gives_503_then_recovers(redis_proxy, database, api) -> None:
    from tests.conftest import create_sale

    sale = await create_sale(api, quantity=10, per_user_limit=10)
    buyer = await api.signup()
    settings = make_settings(redis_url=_through(TEST_REDIS_URL, redis_proxy))
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    try:
        cut = Api(client)
        url = f"/api/v1/sales/{sale['sale_id']}/reservations"
        ok = await _timed(cut, "POST", url, headers=buyer["headers"],
                          json={"quantity": 1, "idempotency_key": "before"})
        assert ok[0] == 201
        await redis_proxy.cut()
        for path, method, kw in (
                (url, "POST", {"json": {"quantity": 1, "idempotency_key": "during"}}),
                (f"/api/v1/sales/{sale['sale_id']}", "GET", {}),
                (f"/api/v1/reservations/{ok[1]['reservation_id']}", "GET", {})):
            status, body, seconds, headers = await _timed(cut, method, path,
                                                          headers=buyer["headers"], **kw)
            assert status == 503, (path, body)
            assert_error(body, "unavailable")
            assert int(headers["Retry-After"]) >= 1
            assert seconds < 3.0, (path, seconds)
        status, body, _, _ = await _timed(cut, "GET", "/readyz")
        assert status == 503 and body["error"]["details"]["redis"] == "unavailable"
        await redis_proxy.restore()
        for _ in range(30):
            status, body, _, _ = await _timed(cut, "POST", url, headers=buyer["headers"],
                                              json={"quantity": 1, "idempotency_key": "after"})
            if status == 201:
                break
            await asyncio.sleep(0.1)
        assert status == 201, body
        assert (await _timed(cut, "GET", "/readyz"))[0] == 200
    finally:
        await client.close()


async def test_postgres_down_gives_503_then_recovers(pg_proxy, database, api) -> None:
    user = await api.signup()
    settings = make_settings(database_url=_through(TEST_DATABASE_URL, pg_proxy))
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    try:
        cut = Api(client)
        assert (await _timed(cut, "GET", "/api/v1/me", headers=user["headers"]))[0] == 200
        await pg_proxy.cut()
        status, body, seconds, headers = await _timed(cut, "GET", "/api/v1/me",
                                                      headers=user["headers"])
        assert status == 503 and seconds < 3.0
        assert_error(body, "unavailable")
        assert headers["Retry-After"] == "1"
        status, body, seconds, _ = await _timed(cut, "POST", "/api/v1/auth/signup", json={
            "email": "late@example.com", "password": "long-enough-1", "name": "Late"})
        assert status == 503 and seconds < 3.0
        assert (await _timed(cut, "GET", "/readyz"))[0] == 503
        await pg_proxy.restore()
        for _ in range(30):
            status, body, _, _ = await _timed(cut, "GET", "/api/v1/me", headers=user["headers"])
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, body
    finally:
        await client.close()


async def test_batcher_fails_fast_and_reconnects(redis_proxy, sales, product_factory) -> None:
    from decimal import Decimal

    from tests.conftest import make_settings as settings_for
    product = await product_factory(stock=10)
    sale = (await sales.create(product_id=product, quantity=10, price=Decimal("1.00"),
                               per_user_limit=10))["sale_id"]
    client = create_redis(settings_for(redis_url=_through(TEST_REDIS_URL, redis_proxy)))
    admission = Admission(client)
    try:
        assert (await admission.reserve(sale, 1, 1, "a")).status == "held"
        await redis_proxy.cut()
        started = time.perf_counter()
        results = await asyncio.gather(*(admission.reserve(sale, 1, 1, f"x{i}")
                                         for i in range(5)), return_exceptions=True)
        assert all(type(r).__name__ in ("ConnectionError", "TimeoutError") for r in results)
        assert time.perf_counter() - started < 3.0
        await redis_proxy.restore()
        assert (await admission.reserve(sale, 1, 1, "b")).status == "held"
    finally:
        await admission.close()
        await client.aclose()


async def test_a_read_only_postgres_gives_503_then_recovers(database) -> None:
    """Postgres up but read-only (a standby, a failover not finished) refuses every write
    with SQLSTATE 25006: an outage (503, Retry-After), not a bug. Staged on a database of
    this test's own, made read-only for new sessions, the gateway's pool renewed."""
    from engine.connections import database_name, with_database
    from engine.migrate import migrate

    name = f"{database_name(TEST_DATABASE_URL)}_read_only"
    url = with_database(TEST_DATABASE_URL, name)
    admin = await asyncpg.connect(with_database(TEST_DATABASE_URL, "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    client = None
    try:
        await migrate(url)
        client = TestClient(GatewayServer(create_app(make_settings(database_url=url))))
        await client.start_server()
        api = Api(client)
        await api.signup()
        read_only = "ALTER DATABASE \"{}\" SET default_transaction_read_only = {}"
        await admin.execute(read_only.format(name, "on"))
        pool = client.server.app[SERVICES].pool
        await pool.expire_connections()
        resp = await client.post("/api/v1/auth/signup", json={
            "email": "ro@example.com", "password": "long-enough-1", "name": "Ro"})
        body = await resp.json()
        assert resp.status == 503, body
        assert_error(body, "unavailable")
        assert body["error"]["details"] == {"dependency": "postgres"}
        assert resp.headers["Retry-After"] == "1"
        await admin.execute(read_only.format(name, "off"))
        await pool.expire_connections()
        await api.signup()  # writes again
    finally:
        if client is not None:
            await client.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
