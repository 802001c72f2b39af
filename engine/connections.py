"""Redis and Postgres connections, built once at start-up and passed down."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from engine.settings import Settings


def create_redis(settings: Settings, *, max_connections: int = 64) -> aioredis.Redis:
    """A redis.asyncio client (hiredis parser when installed) that fails fast when Redis is
    unreachable instead of hanging a request."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.dependency_timeout,
        socket_timeout=max(settings.dependency_timeout, 2.0),
        max_connections=max_connections,
        health_check_interval=30,
        decode_responses=False,
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    # NUMERIC already decodes to Decimal; jsonb/json decode to Python objects.
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(settings: Settings, *, min_size: int = 0, max_size: int | None = None,
                      database_url: str | None = None) -> asyncpg.Pool:
    """An asyncpg pool. ``min_size=0`` lets a process start while Postgres is down; each
    connection attempt gives up after ``dependency_timeout`` so requests answer 503 fast."""
    return await asyncpg.create_pool(
        database_url or settings.database_url,
        min_size=min_size,
        max_size=max_size or settings.db_pool_max,
        init=_init_connection,
        timeout=settings.dependency_timeout,
        command_timeout=30,
        max_inactive_connection_lifetime=60,
    )


async def close_pool(pool: asyncpg.Pool, *, timeout: float = 5.0) -> None:
    """Close gracefully, but never let a dead Postgres hang a shutdown."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
