"""How a connection we open ourselves reaches Redis: the way the redis-py client's own
connections do (TCP, TLS with redis-py's SSL context, a Unix socket), or not at all.

The script batchers (engine/batching.py, engine/cluster.py) keep their own asyncio
connections for the hot path; what they connect to and how comes from here, so a
``unix://`` or ``rediss://`` URL reaches the same server for every connection.
"""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError

from engine.errors import Misconfigured


def connect_like(connection_class: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """ScriptBatcher's connection arguments for reaching the server the way a redis-py
    connection built as ``connection_class(**kwargs)`` does (a client's pool, or a cluster
    node's with its host and port). redis-py builds that connection (no socket opened) so
    its own parsing of the options decides: the Unix socket path, the TLS context (CA file,
    certificate checks) and TCP keepalive. Misconfigured (one line) for what the batcher
    cannot reproduce."""
    if connection_class not in (Connection, SSLConnection, UnixDomainSocketConnection):
        raise Misconfigured(f"the Redis script batcher cannot connect the way "
                            f"{connection_class.__name__} does (only TCP, TLS and "
                            "Unix socket connections)")
    if kwargs.get("credential_provider") is not None:
        raise Misconfigured("the Redis script batcher authenticates with a username and "
                            "password only, not a credential_provider")
    try:
        conn = connection_class(**kwargs)
    except (RedisError, TypeError, ValueError) as exc:
        raise Misconfigured(f"Redis connection options: {exc}") from exc
    timeout = kwargs.get("socket_timeout") or 2.0  # as given (redis-py's default is 5 s)
    found: dict[str, Any] = dict(
        db=int(conn.db or 0), username=conn.username, password=conn.password,
        timeout=timeout, connect_timeout=kwargs.get("socket_connect_timeout") or timeout)
    if isinstance(conn, UnixDomainSocketConnection):
        if not conn.path:
            raise Misconfigured("the Redis URL names a Unix socket without a path "
                                "(unix:///path/to/redis.sock)")
        return {**found, "path": conn.path}
    found.update(host=conn.host, port=int(conn.port),
                 keepalive=conn.socket_keepalive_options if conn.socket_keepalive else None)
    if isinstance(conn, SSLConnection):
        try:
            found["ssl"] = conn.ssl_context.get()
        except (OSError, ssl.SSLError, ValueError) as exc:
            files = ", ".join(f"{k}={v}" for k, v in kwargs.items()
                              if k in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
                                       "ssl_keyfile") and v)
            raise Misconfigured(f"Redis TLS settings (rediss://) unusable: {exc}"
                                + (f" ({files})" if files else "")) from exc
    return found
