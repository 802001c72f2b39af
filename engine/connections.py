"""Redis and Postgres connections, built once at start-up and passed down."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import (
    DefaultParser,
    _AsyncHiredisParser,
    _AsyncRESP2Parser,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from engine.errors import REFUSALS, Misconfigured, Refused
from engine.settings import Settings

log = logging.getLogger(__name__)
AnyRedis = aioredis.Redis | aioredis.RedisCluster
# A cluster node's pool does not wait for a free connection (redis-py raises at once when
# all are busy), so a cluster client gets this many times FLASHSALE_REDIS_POOL_MAX per node.
CLUSTER_POOL_FACTOR = 4


def _knowing_refusals() -> type:
    """redis-py's reply parser, giving every code of errors.REFUSALS a type (Refused where
    redis-py has none: MISCONF, NOREPLICAS, BUSY), so ``except REDIS_DOWN`` catches them."""
    base = DefaultParser if DefaultParser is _AsyncHiredisParser else _AsyncRESP2Parser
    codes = {code: Refused for code in REFUSALS if code not in base.EXCEPTION_CLASSES}
    return type("RefusalsParser", (base,),
                {"EXCEPTION_CLASSES": {**base.EXCEPTION_CLASSES, **codes}})


PARSER = _knowing_refusals()


def _closed_under_us(exc: AttributeError | RuntimeError) -> bool:
    """A command that met its connection closed: redis-py's writer gone (AttributeError),
    or uvloop refusing to write on a closed transport (RuntimeError "... the handler is
    closed", where asyncio's own loop would only log). Any other RuntimeError is a bug."""
    return isinstance(exc, AttributeError) or "the handler is closed" in str(exc)


def _outage(exc: AttributeError | RuntimeError) -> RedisConnectionError:
    return RedisConnectionError(f"Redis Cluster connection closed during a failover ({exc})")


class FailoverSafeCluster(aioredis.RedisCluster):
    """redis-py (8.1) answers CLUSTERDOWN or an uncovered slot (a failover under way) by
    closing every connection of the client, also those other tasks are using at that
    moment, and a cluster node's connections are taken from its pool without a check: a
    command then fails with an AttributeError (a socket writer that is gone) or, on uvloop,
    a RuntimeError (a write on a closed transport: a node that died and came back) instead
    of a connection error. Here that is the outage it is: a ConnectionError, which the
    callers already retry (the reconciler) or answer with a 503 (the gateway); the
    connection is dropped, so the retry connects afresh.

    Its nodes' connections parse replies with PARSER (the refusals typed), given the way
    redis-py gives them options RedisCluster takes no argument for: in the template for
    nodes found later and in the start-up nodes' own copies."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nodes_manager.connection_kwargs["parser_class"] = PARSER
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_kwargs["parser_class"] = PARSER

    async def execute_command(self, *args, **kwargs):
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            if not _closed_under_us(exc):
                raise
            raise _outage(exc) from exc

    def pipeline(self, transaction=None, shard_hint=None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused there
        return _FailoverSafePipeline(self, transaction)


class _FailoverSafePipeline(ClusterPipeline):
    async def execute(self, *args, **kwargs):
        try:
            return await super().execute(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            if not _closed_under_us(exc):
                raise
            raise _outage(exc) from exc


def where(url: str) -> str:
    """host:port of a URL (a Unix socket's path), never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or ''}".rstrip(":")


def redis_db(url: str) -> int:
    return int(parse_url(url).get("db") or 0)


async def open_redis(settings: Settings, *, max_connections: int | None = None) -> AnyRedis:
    """The Redis client a process runs on: a RedisCluster when FLASHSALE_REDIS_CLUSTER=1 or
    (``auto``) the server the URL names says ``cluster_enabled:1``; else one server's."""
    cluster = await cluster_mode(settings)
    return create_redis(settings, max_connections=max_connections, cluster=cluster)


async def cluster_enabled(settings: Settings) -> bool | None:
    """What ``INFO cluster`` of the node FLASHSALE_REDIS_URL names says; None when it does
    not answer. Asked on db 0: a cluster node refuses SELECT of any other db."""
    options = parse_url(settings.redis_url)  # with its connection_class: unix://, rediss://
    options.pop("db", None)
    client = aioredis.Redis.from_pool(aioredis.ConnectionPool(
        **options, socket_connect_timeout=settings.dependency_timeout,
        socket_timeout=settings.dependency_timeout))
    try:
        info = await client.info("cluster")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            raise
        return None
    finally:
        await client.aclose()
    return int(info.get("cluster_enabled") or 0) == 1


class ClusterModeChanged(Exception):
    """The node FLASHSALE_REDIS_URL names answered, after start-up, other than the process
    assumed when it did not answer: its clients are of the wrong kind, and the process
    must start again (the gateway and the reconciler do so by themselves)."""


# The Redis URLs whose kind this process had to guess (cluster_mode: auto, no answer).
_GUESSED: set[str] = set()


async def confirm_cluster_mode(settings: Settings, client: AnyRedis, every: float = 1.0) -> None:
    """When this process had to guess whether FLASHSALE_REDIS_URL is a cluster (``auto``
    and no answer at start-up, cluster_mode): ask the named node ``INFO cluster`` every
    ``every`` seconds until it answers, then return if ``client`` is the kind its answer
    calls for, or raise ClusterModeChanged. Until the process starts again, a key on
    another master is answered MOVED, which callers see as an outage (errors.REDIS_DOWN).
    A mode configured or answered at start-up is known: returns at once."""
    if settings.redis_url not in _GUESSED:
        return
    while True:
        try:
            enabled = await cluster_enabled(settings)
        except redis.exceptions.RedisError:  # refused (a password, an ACL): no answer either
            enabled = None
        if enabled is not None:
            break
        await asyncio.sleep(every)
    _GUESSED.discard(settings.redis_url)
    if enabled != is_cluster(client):
        raise ClusterModeChanged(
            f"Redis at {where(settings.redis_url)} is a "
            f"{'Redis Cluster node' if enabled else 'single server, not a cluster node'}, "
            "but it did not answer when this process started and was taken for "
            f"{'one server' if enabled else 'a cluster'}")


async def cluster_mode(settings: Settings) -> bool:
    """Whether to talk to a Redis Cluster. Misconfigured (one line) when the setting and
    the server disagree, or a cluster is named with a db other than 0. With ``auto`` and a
    server that does not answer yet: one server (logged; set FLASHSALE_REDIS_CLUSTER to
    choose without asking)."""
    wanted, url = settings.cluster_mode, settings.redis_url
    db = redis_db(url)
    if wanted and db:
        raise Misconfigured(f"FLASHSALE_REDIS_URL names db {db}, but a Redis Cluster has only "
                            "db 0: end the URL with /0.")
    if wanted and url.lower().startswith("unix:"):
        raise Misconfigured("FLASHSALE_REDIS_CLUSTER=1 but FLASHSALE_REDIS_URL names a Unix "
                            "socket: a Redis Cluster is reached over TCP (redis:// or "
                            "rediss://).")
    enabled = await cluster_enabled(settings)
    if enabled is None:
        if wanted is None:
            _GUESSED.add(url)
            log.warning("Redis at %s does not answer, so whether it is a cluster is unknown: "
                        "assuming one server until it answers (set FLASHSALE_REDIS_CLUSTER "
                        "to say which)", where(url))
        return bool(wanted)
    _GUESSED.discard(url)  # answered now, whatever an earlier call had to guess
    if wanted is True and not enabled:
        raise Misconfigured(f"FLASHSALE_REDIS_CLUSTER=1 but Redis at {where(url)} is not a "
                            "cluster node (cluster_enabled:0): name a node of the cluster in "
                            "FLASHSALE_REDIS_URL, or set FLASHSALE_REDIS_CLUSTER=0.")
    if wanted is False and enabled:
        raise Misconfigured(f"Redis at {where(url)} is a Redis Cluster node but "
                            "FLASHSALE_REDIS_CLUSTER=0: set it to 1 (or leave it unset to "
                            "detect it).")
    if enabled and url.lower().startswith("unix:"):
        raise Misconfigured(f"Redis at {where(url)} is a Redis Cluster node: a cluster is "
                            "reached over TCP (redis:// or rediss://), not a Unix socket.")
    if enabled and db:
        raise Misconfigured(f"Redis at {where(url)} is a Redis Cluster node, which has only "
                            f"db 0, but FLASHSALE_REDIS_URL names db {db}: end the URL with /0.")
    return enabled


def create_redis(settings: Settings, *, max_connections: int | None = None,
                 cluster: bool = False) -> AnyRedis:
    """A redis.asyncio client (hiredis parser when installed) that tells a busy pool from a
    dead Redis.

    The pool holds up to ``redis_pool_max`` connections and, when all are in use, a command
    waits for one (at most ``dependency_timeout``) instead of failing: 200 concurrent reads
    on a 64-connection pool queue for a few milliseconds, they are not an outage. A command
    that fails on a connection Redis has closed (Redis restarted) is retried once, at
    once, on a fresh connection; only a second failure reaches the caller (a 503).

    ``cluster``: a RedisCluster client, seeded by the node the URL names (it reads the
    slot map from it and follows MOVED/ASK itself); see README "Redis Cluster"."""
    if cluster:
        return FailoverSafeCluster.from_url(
            settings.redis_url,
            max_connections=(max_connections or settings.redis_pool_max) * CLUSTER_POOL_FACTOR,
            socket_connect_timeout=settings.dependency_timeout,
            socket_timeout=max(settings.dependency_timeout, 2.0),
            health_check_interval=30, decode_responses=False)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_pool_max,
        timeout=settings.dependency_timeout,
        socket_connect_timeout=settings.dependency_timeout,
        socket_timeout=max(settings.dependency_timeout, 2.0),
        health_check_interval=30,
        decode_responses=False,
        parser_class=PARSER,
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


def is_cluster(redis: object) -> bool:
    return isinstance(redis, aioredis.RedisCluster)


async def redis_state(redis: AnyRedis, url: str | None = None) -> dict[str, str]:
    """What readiness reports of Redis: {"redis": "ok"} when it answers; on a cluster also
    "cluster": the state a node reports (``ok`` only when every slot is served). Raises
    when Redis cannot answer (the caller reports it unavailable), and while this process
    still runs on a guess of whether the Redis at ``url`` (the client's) is a cluster
    (confirm_cluster_mode has not heard the answer yet: a wrong guess answers 503 until
    the process has started again)."""
    if url in _GUESSED:
        raise RedisConnectionError(
            "whether Redis is a cluster is not confirmed yet (cluster mode guessed at start)")
    if not is_cluster(redis):
        await redis.ping()
        return {"redis": "ok"}
    info = await redis.cluster_info()  # one node's view, a random one
    state = info.get("cluster_state", "fail")
    state = state.decode() if isinstance(state, bytes) else str(state)
    await redis.ping(target_nodes=aioredis.RedisCluster.PRIMARIES)  # every master answers
    return {"redis": "ok", "cluster": state}


async def probe_all(probes: dict[str, Callable[[], Awaitable[object]]],
                    timeout: float) -> dict[str, bool]:
    """Run every probe at once, each given ``timeout`` seconds: whether each one answered
    (a probe that raises or runs out of time did not; its cause is the caller's to log).

    Cancelled, it returns only once every probe has ended. asyncio.gather would return
    as soon as the first cancelled probe did, leaving the others running: a Redis ping
    still connecting then finds its pool closed under it by the shutdown that cancelled
    it, and redis-py's retry reconnects a connection nobody closes any more (the
    ResourceWarning the tests reported; tests/fast/test_probes.py)."""
    answered = dict.fromkeys(probes, False)

    async def run(name: str, probe: Callable[[], Awaitable[object]]) -> None:
        try:
            await asyncio.wait_for(probe(), timeout)
        except Exception:  # any failure means down
            return
        answered[name] = True

    async with asyncio.TaskGroup() as group:
        for name, probe in probes.items():
            group.create_task(run(name, probe), name=f"probe-{name}")
    return answered


def db_of(redis: aioredis.Redis | aioredis.RedisCluster) -> int:
    """The db number ``redis`` talks to (a cluster has only db 0): pub/sub channel names
    are global across a server's dbs, so channels carry it."""
    pool = getattr(redis, "connection_pool", None)
    return int(pool.connection_kwargs.get("db") or 0) if pool is not None else 0
