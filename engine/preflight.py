"""Start-up checks that turn configuration mistakes into one line an operator can act on.

A dependency that does not answer is an outage (a process starts anyway and recovers when
it comes back); a dependency that answers "no" (unknown database, role or password, a
Redis db index out of range, a port another process holds) is a mistake to fix first.
"""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions

from engine.connections import cluster_mode, database_name, where
from engine.errors import POSTGRES_REFUSED, Misconfigured
from engine.settings import Settings

__all__ = [
    "check_port",
    "check_postgres",
    "check_redis",
    "explain_postgres",
    "explain_redis",
    "where",
]


def explain_postgres(exc: BaseException, url: str) -> str | None:
    """One line for a Postgres refusal, or None when ``exc`` is not one."""
    parts = urlsplit(url)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (f"Postgres at {where(url)} has no database '{database_name(url)}': create it "
                "with `flashsale migrate`, or fix FLASHSALE_DATABASE_URL.")
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (f"Postgres at {where(url)} refused the password of role "
                f"'{parts.username}': fix FLASHSALE_DATABASE_URL.")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return (f"Postgres at {where(url)} refused role '{parts.username}' "
                f"({str(exc).splitlines()[0]}): fix FLASHSALE_DATABASE_URL.")
    return None


def explain_redis(exc: BaseException, url: str) -> str | None:
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return f"Redis at {where(url)} refused the credentials: fix FLASHSALE_REDIS_URL."
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index" in str(exc):
        return f"Redis at {where(url)}: {exc}; fix the db number in FLASHSALE_REDIS_URL."
    return None


async def check_postgres(settings: Settings) -> bool:
    """True when Postgres answers; False when unreachable; Misconfigured when it refuses."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=settings.dependency_timeout)
    except POSTGRES_REFUSED as exc:
        raise Misconfigured(explain_postgres(exc, settings.database_url)) from exc
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError):
        return False
    await conn.close()
    return True


async def check_redis(settings: Settings) -> bool:
    """As check_postgres, for Redis: also a cluster setting the server contradicts, or a
    cluster named with a db other than 0 (engine.connections.cluster_mode)."""
    try:
        if await cluster_mode(settings):
            return True  # the node answered INFO; the client finds the others itself
    except redis.exceptions.AuthenticationError as exc:
        raise Misconfigured(explain_redis(exc, settings.redis_url)) from exc
    client = aioredis.Redis.from_url(settings.redis_url,
                                     socket_connect_timeout=settings.dependency_timeout,
                                     socket_timeout=settings.dependency_timeout)
    try:
        await client.ping()
        return True
    except redis.exceptions.ResponseError as exc:
        raise Misconfigured(explain_redis(exc, settings.redis_url) or str(exc)) from exc
    except redis.exceptions.AuthenticationError as exc:
        raise Misconfigured(explain_redis(exc, settings.redis_url)) from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        await client.aclose()


def check_port(host: str, port: int, what: str, *, reuse_port: bool = False) -> None:
    """Misconfigured when ``host:port`` cannot be bound (in use, not ours, no such address).
    With ``reuse_port`` (multi-worker gateways), sockets that share the port on purpose
    (SO_REUSEPORT, the same user) do not count as taking it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Misconfigured(f"cannot serve {what} on {host}:{port}: unknown address "
                            f"({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = ("the port is in use by another process" if exc.errno == errno.EADDRINUSE
                      else exc.strerror)
            raise Misconfigured(f"cannot serve {what} on {host}:{port}: {reason}") from exc
