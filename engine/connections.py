"""Redis and Postgres connections, built once at start-up and passed down."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.settings import Settings


def create_redis(settings: Settings, *, max_connections: int | None = None) -> aioredis.Redis:
    """A redis.asyncio client (hiredis parser when installed) that tells a busy pool from a
    dead Redis.

    The pool holds up to ``redis_pool_max`` connections and, when all are in use, a command
    waits for one (at most ``dependency_timeout``) instead of failing: 200 concurrent reads
    on a 64-connection pool queue for a few milliseconds, they are not an outage. A command
    that fails on a connection Redis has closed (Redis restarted) is retried once, at
    once, on a fresh connection; only a second failure reaches the caller (a 503)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_pool_max,
        timeout=settings.dependency_timeout,
        socket_connect_timeout=settings.dependency_timeout,
        socket_timeout=max(settings.dependency_timeout, 2.0),
        health_check_interval=30,
        decode_responses=False,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis.from_pool(pool)


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


def db_of(redis: aioredis.Redis | aioredis.RedisCluster) -> int:
    """The db number ``redis`` talks to (a cluster has only db 0): pub/sub channel names
    are global across a server's dbs, so channels carry it."""
    pool = getattr(redis, "connection_pool", None)
    return int(pool.connection_kwargs.get("db") or 0) if pool is not None else 0
