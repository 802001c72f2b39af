"""Fixtures: real Redis and real Postgres, a fresh schema per session, clean state per test.

The test database and Redis db are separate from the ones ``make demo`` uses:
FLASHSALE_TEST_DATABASE_URL (default .../flashsale_test) and FLASHSALE_TEST_REDIS_URL
(default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from engine.connections import create_pool, create_redis, database_name, with_database
from engine.migrate import migrate
from engine.settings import Settings
from gateway.app import create_app
from gateway.hot import HotAppRunner

TEST_DATABASE_URL = os.environ.get(
    "FLASHSALE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_test")
TEST_REDIS_URL = os.environ.get("FLASHSALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Subprocesses the tests start (serve, reconcile) run on the test secret or the
# development one; either is only allowed in development.
os.environ.setdefault("FLASHSALE_ENV", "development")
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
SECRET = "test-secret-0123456789abcdef0123456789abcdef"


def make_settings(**overrides) -> Settings:
    base = dict(database_url=TEST_DATABASE_URL, redis_url=TEST_REDIS_URL,
                admin_token=ADMIN_TOKEN, secret=SECRET, rate_limit=0,
                # Tests sign many users up from one address, at a cheap hashing cost
                # (tests/test_hostile_auth.py checks the production ones).
                signups_per_hour=0, password_cost=10)
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
async def database(settings: Settings) -> str:
    """A freshly created, fully migrated test database (dropped first)."""
    name = database_name(settings.database_url)
    admin = await asyncpg.connect(with_database(settings.database_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    await migrate(settings.database_url)
    return settings.database_url


@pytest.fixture(scope="session")
async def pool(settings: Settings, database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings, min_size=1, max_size=20)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(settings, max_connections=256)
    yield client
    await client.aclose()


_KEEP = {"schema_migrations"}


@pytest.fixture(autouse=True)
async def clean(pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    """Every test starts from empty tables and an empty Redis db (tests/fast/ overrides
    this: that tier runs without services)."""
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        if r["tablename"] not in _KEEP]
    if tables:
        await pool.execute(
            "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    await redis.flushdb()


class Api:
    """A test client that knows the contract: JSON in and out, tokens, quick sign-ups."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(self, method: str, path: str, *, json=None, headers=None, data=None,
                   expect: int | None = None) -> tuple[int, object]:
        resp = await self.client.request(method, path, json=json, data=data, headers=headers)
        body = await resp.json(content_type=None) if resp.content_length != 0 else None
        if expect is not None:
            assert resp.status == expect, (resp.status, body)
        return resp.status, body

    async def signup(self, email: str | None = None, password: str = "correct-horse-1",
                     name: str = "Test User") -> dict:
        email = email or f"u-{uuid.uuid4().hex[:12]}@example.com"
        _, body = await self.call("POST", "/api/v1/auth/signup", expect=201,
                                  json={"email": email, "password": password, "name": name})
        body["headers"] = {"Authorization": f"Bearer {body['token']}"}
        body["email"] = email
        return body

    async def grant(self, user: dict, role: str) -> dict:
        """Give ``user`` a role and a fresh token that carries it."""
        await self.call("PUT", f"/api/v1/admin/users/{user['user_id']}/role",
                        json={"role": role}, headers=self.admin, expect=200)
        _, body = await self.call("POST", "/api/v1/auth/login", expect=200,
                                  json={"email": user["email"], "password": "correct-horse-1"})
        return {**user, "token": body["token"],
                "headers": {"Authorization": f"Bearer {body['token']}"}}


class GatewayServer(TestServer):
    """aiohttp's TestServer with the runner `flashsale serve` uses: the reservation
    endpoint is answered in the hot lane (gateway/hot.py), so every test through a
    server checks the lane."""

    async def _make_runner(self, **kwargs):
        return HotAppRunner(self.app, **kwargs)


@pytest.fixture
async def app_client(settings: Settings, database: str) -> AsyncIterator[TestClient]:
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def api(app_client: TestClient) -> Api:
    return Api(app_client)


def assert_error(body: object, code: str) -> None:
    """The one error shape of the contract, with the expected code."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err


async def create_product(api: Api, *, stock: int = 1000, price: str = "100.00",
                         name: str = "Hot Gadget") -> dict:
    _, product = await api.call("POST", "/api/v1/seller/products", headers=api.admin, expect=201,
                                json={"name": name, "price": price, "available_qty": stock,
                                      "brand": "Acme"})
    return product


async def create_sale(api: Api, *, quantity: int, per_user_limit: int = 1,
                      hold_seconds: int = 600, stock: int | None = None, **extra) -> dict:
    product = await create_product(api, stock=quantity if stock is None else stock)
    _, sale = await api.call("POST", "/api/v1/admin/sales", headers=api.admin, expect=201, json={
        "product_id": product["product_id"], "quantity": quantity, "price": "9.99",
        "per_user_limit": per_user_limit, "hold_seconds": hold_seconds, **extra})
    return sale


@pytest.fixture
async def sales(pool: asyncpg.Pool, redis: aioredis.Redis):
    from engine.sales import Sales
    return Sales(pool=pool, redis=redis)


@pytest.fixture
async def product_factory(pool: asyncpg.Pool):
    """Insert a product with stock straight into Postgres (engine-level tests)."""
    async def make(stock: int = 100, price: str = "50.00") -> int:
        product_id = await pool.fetchval(
            "INSERT INTO products (name, price) VALUES ('Widget', $1) RETURNING product_id",
            Decimal(price))
        await pool.execute("INSERT INTO inventory (product_id, available_qty) VALUES ($1, $2)",
                           product_id, stock)
        return product_id
    return make


@pytest.fixture
async def admission(redis: aioredis.Redis):
    """The engine's admission on the test Redis (tests/test_admission.py has its own,
    parametrized over batching)."""
    from engine.admission import Admission
    adm = Admission(redis)
    yield adm
    await adm.close()


@pytest.fixture(scope="session")
def cluster_url():
    """The local Redis Cluster's URL (started for the session unless already running);
    the test is skipped, with the reason, when it cannot start here."""
    from tests.cluster_support import start_cluster, stop_cluster

    url, started, why = start_cluster()
    if url is None:
        pytest.skip(f"the local Redis Cluster could not start: {why}")
    yield url
    if started:
        stop_cluster()


@pytest.fixture(scope="session")
async def cluster_client(cluster_url):
    client = aioredis.RedisCluster.from_url(cluster_url, socket_timeout=2.0,
                                            socket_connect_timeout=2.0)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def cluster(cluster_client):
    """The cluster client, every master flushed."""
    await cluster_client.flushdb()  # every master
    return cluster_client


@pytest.fixture
def procs():
    """Subprocesses a test starts (reconcilers), stopped after it."""
    started = []
    yield started
    for p in started:
        p.stop()
