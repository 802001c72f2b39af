"""Script calls on a Redis Cluster: one auto-batcher (engine/batching.py) per master, each
call routed by its keys' slot.

Every script's keys share one hash tag (engine/keys.py), so a call has one slot. The slot
map comes from ``CLUSTER SLOTS`` (any node answers). The cluster's answers are handled
here, each resent only when Redis says the script did not run:

- ``MOVED <slot> <node>``: the slot lives elsewhere now (resharding, failover): the slot
  is pointed at that node, the call resent there, and the whole map refreshed.
- ``ASK <slot> <node>``: the slot is being migrated and this key has gone: the call is
  resent to that node once, after ``ASKING`` on the same connection.
- ``TRYAGAIN`` (a multi-key call during a migration) and ``CLUSTERDOWN`` (no quorum, or
  a failover under way): wait a little, refresh the map, resend, until the timeout;
  then the caller gets redis's ConnectionError, a 503 at the gateway.
- A node that cannot be reached or stops answering fails its calls in flight (a script
  may have run: it is not resent, as with a single Redis) and makes the map refresh, so
  once a replica is promoted the next call reaches it.

Every connection to a node (the batchers', the slot map reads) goes the way the cluster
client's own do: TLS with its context when its URL is ``rediss://``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.batching import ScriptBatcher
from engine.codec import text
from engine.errors import Misconfigured
from engine.scripts import Script
from engine.transport import connect_like

SLOTS = 16384
Node = tuple[str, int]


def _node(text: str) -> Node:
    host, _, port = text.rpartition(":")
    return host, int(port)


def is_cluster(client: Any) -> bool:
    return isinstance(client, aioredis.RedisCluster)


def batcher_beside(client: aioredis.Redis | aioredis.RedisCluster
                   ) -> ScriptBatcher | ClusterScriptBatcher:
    """The auto-batcher that suits ``client``: one connection to its server, or one per
    master of its cluster."""
    if is_cluster(client):
        return ClusterScriptBatcher.beside(client)
    return ScriptBatcher.beside(client)


class ClusterScriptBatcher:
    def __init__(self, *, nodes: Sequence[Node], username: str | None = None,
                 password: str | None = None, connect_timeout: float = 1.5,
                 timeout: float = 2.0, tls: dict[str, Any] | None = None,
                 keepalive: dict[int, int | bytes] | None = None) -> None:
        """``tls``: redis-py's ``ssl_*`` options (the cluster client's) for TLS to every
        node, None for plain TCP; ``keepalive``: TCP keepalive socket options."""
        self._seeds = list(nodes)
        self._username, self._password = username, password
        self._connect_timeout, self._timeout = connect_timeout, timeout
        self._tls = tls
        self._keepalive = keepalive
        self._ssl = connect_like(SSLConnection, tls)["ssl"] if tls is not None else None
        self._slots: list[Node | None] = [None] * SLOTS
        self._batchers: dict[Node, ScriptBatcher] = {}
        self._refreshing: asyncio.Task | None = None
        self._refreshed_at = 0.0
        self.redirections = 0  # MOVED and ASK answers seen (tests, metrics)

    @classmethod
    def beside(cls, client: aioredis.RedisCluster) -> ClusterScriptBatcher:
        """Batchers for ``client``'s masters, connecting as its nodes' connections do
        (plain TCP or TLS); Misconfigured when they cannot."""
        kw = client.connection_kwargs
        if client.nodes_manager.address_remap is not None:
            raise Misconfigured("the Redis script batcher cannot follow a RedisCluster "
                                "address_remap")
        connection_class = kw.get("connection_class", Connection)
        nodes = [(n.host, n.port) for n in client.get_nodes()] or [
            (n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
        # How a node's connection is built (redis.asyncio.cluster.ClusterNode).
        node_kwargs = {k: v for k, v in kw.items()
                       if k not in ("max_connections", "connection_class", "response_callbacks")}
        host, port = nodes[0] if nodes else ("127.0.0.1", 6379)
        found = connect_like(connection_class, {**node_kwargs, "host": host, "port": port})
        tls = ({k: v for k, v in kw.items() if k.startswith("ssl_")}
               if connection_class is SSLConnection else None)
        return cls(nodes=nodes, username=found["username"], password=found["password"],
                   connect_timeout=found["connect_timeout"], timeout=found["timeout"],
                   tls=tls, keepalive=found["keepalive"])

    def master_of(self, key: str) -> Node | None:
        return self._slots[key_slot(key.encode())]

    # -- calls ---------------------------------------------------------------------------
    async def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        slot = key_slot(keys[0].encode())
        asking: Node | None = None
        give_up_at: float | None = None
        for _ in range(32):
            node = asking or self._slots[slot]
            if node is None:
                await self.refresh()
                node = self._slots[slot]
                if node is None:
                    raise RedisConnectionError(f"no Redis Cluster node serves slot {slot}")
            try:
                return await self._batcher(node).call(script, keys, args,
                                                      asking=asking is not None)
            except ResponseError as exc:
                kind, _, rest = str(exc).partition(" ")
                asking = None
                if kind == "MOVED":
                    moved_slot, where = rest.split()
                    self._slots[int(moved_slot)] = _node(where)
                    self.redirections += 1
                    self._refresh_soon()
                elif kind == "ASK":
                    asking = _node(rest.split()[1])
                    self.redirections += 1
                elif kind in ("TRYAGAIN", "CLUSTERDOWN"):
                    now = time.monotonic()
                    give_up_at = give_up_at or now + self._timeout
                    if now >= give_up_at:
                        raise RedisConnectionError(
                            f"the Redis Cluster cannot answer: {exc}") from exc
                    await asyncio.sleep(0.05)
                    self._refresh_soon()
                else:
                    raise
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._refresh_soon()  # a failover may be under way
                raise
        raise RedisConnectionError("too many Redis Cluster redirections")

    async def wait_replicas(self, key: str, replicas: int, timeout_ms: int) -> int:
        """WAIT on the connection to the master of ``key``'s slot (engine/batching.py)."""
        node = self._slots[key_slot(key.encode())]
        if node is None:
            raise RedisConnectionError("no Redis Cluster node known for the slot")
        return await self._batcher(node).wait_replicas(key, replicas, timeout_ms)

    def _batcher(self, node: Node) -> ScriptBatcher:
        batcher = self._batchers.get(node)
        if batcher is None:
            batcher = self._batchers[node] = ScriptBatcher(
                host=node[0], port=node[1], username=self._username, password=self._password,
                connect_timeout=self._connect_timeout, timeout=self._timeout,
                ssl=self._ssl, keepalive=self._keepalive)
        return batcher

    # -- the slot map --------------------------------------------------------------------
    def _refresh_soon(self) -> None:
        if self._refreshing is None and time.monotonic() - self._refreshed_at > 0.1:
            self._refreshing = asyncio.ensure_future(self._load_slots())

    async def refresh(self) -> None:
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._load_slots())
        await asyncio.shield(self._refreshing)

    async def _load_slots(self) -> None:
        """Read the map from the first node that answers; keep the old one if none does
        (callers then fail with a connection error and the next call tries again)."""
        try:
            for host, port in list(dict.fromkeys([*self._batchers, *self._seeds])):
                client = aioredis.Redis(host=host, port=port, username=self._username,
                                        password=self._password,
                                        socket_connect_timeout=self._connect_timeout,
                                        socket_timeout=self._timeout,
                                        **({"ssl": True, **self._tls} if self._tls is not None
                                           else {}))
                try:
                    ranges = await client.execute_command("CLUSTER SLOTS")
                except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError):
                    continue
                finally:
                    await client.aclose()
                slots: list[Node | None] = [None] * SLOTS
                for start, end, master, *_replicas in ranges:
                    # An empty address: the node that answered (a node that has met no
                    # other does not know its own address; redis-py reads it so too).
                    where = (text(master[0]) or host, int(master[1]))
                    slots[start:end + 1] = [where] * (end - start + 1)
                self._slots = slots
                self._seeds = list(dict.fromkeys([*self._seeds, *(n for n in slots if n)]))
                return
        finally:
            self._refreshed_at = time.monotonic()
            self._refreshing = None

    async def drain(self) -> None:
        await asyncio.gather(*(b.drain() for b in self._batchers.values()))
