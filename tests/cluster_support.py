"""The local Redis Cluster for tests (scripts/cluster.sh, 3 masters + 3 replicas under
.var/cluster): starting it once per session, and helpers the cluster tests share. The
fixtures themselves are in conftest.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.admission import Admission
from engine.cluster import ClusterScriptBatcher
from engine.errors import SoldOut, Unavailable
from engine.keys import sale_keys

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cluster.sh"
DOWN = (RedisConnectionError, RedisTimeoutError, Unavailable, OSError)


def start_cluster() -> tuple[str | None, bool, str]:
    """(url or None, whether this call started it, why it could not start)."""
    running = subprocess.run(["bash", str(SCRIPT), "url"], capture_output=True, text=True)
    if running.returncode == 0:
        return running.stdout.strip(), False, ""
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, False, done.stderr.strip()
    return done.stdout.strip().splitlines()[-1], True, ""


def stop_cluster() -> None:
    subprocess.run(["bash", str(SCRIPT), "stop"], timeout=60)


def master_pid(port: int) -> int:
    return int((ROOT / ".var" / "cluster" / str(port) / "redis.pid").read_text())


def restart_node(port: int) -> None:
    """Start a killed node again: it rejoins as a replica of the promoted one."""
    subprocess.run(["bash", str(SCRIPT), "node", str(port)], timeout=60, check=True)


def sales_on_distinct_masters(cluster, count: int, start: int = 1) -> list[int]:
    """Sale ids whose keys live on ``count`` different masters."""
    chosen, masters = [], set()
    for sale in range(start, start + 10_000):
        node = cluster.get_node_from_key(sale_keys(sale).meta)
        if node.name not in masters:
            masters.add(node.name)
            chosen.append(sale)
            if len(chosen) == count:
                return chosen
    raise AssertionError("the cluster has fewer masters than expected")


async def master_port(cluster, sale: int) -> int:
    """The port of the master serving the sale now, read afresh from CLUSTER SLOTS."""
    batcher = ClusterScriptBatcher.beside(cluster)
    await batcher.refresh()
    return batcher.master_of(sale_keys(sale).meta)[1]


async def _wait_until(port: int, timeout: float,
                      ready: Callable[[aioredis.Redis], Awaitable[bool]]) -> None:
    """Poll the node on ``port`` every 0.1 s until ``ready`` says so (a node still down
    counts as not ready), or ``timeout`` passes."""
    client = aioredis.Redis(port=port, socket_timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if await ready(client):
                    return
            except DOWN:
                pass
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def _cluster_ok(client: aioredis.Redis) -> bool:
    info = await client.execute_command("CLUSTER INFO")  # parsed to a dict
    return info.get("cluster_state") == "ok"


async def _replica_synced(client: aioredis.Redis) -> bool:
    info = await client.info("replication")
    return (info.get("role") == "slave" and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress"))


async def wait_cluster_ok(port: int, timeout: float = 30.0) -> None:
    await _wait_until(port, timeout, _cluster_ok)


async def wait_replica_synced(port: int, timeout: float = 30.0) -> None:
    """Until the node started again is a replica in sync with its master: a later
    failover test may kill that master, and a replica still syncing cannot take over."""
    await _wait_until(port, timeout, _replica_synced)


@dataclass
class Failover:
    """What buyers saw across a master's SIGKILL (``buy_across_a_master_kill``)."""
    admitted: dict[int, str] = field(default_factory=dict)  # user -> reservation id
    outages: int = 0            # attempts that met the outage and were tried again
    resumed_after: float = 0.0  # seconds from the kill to the first admission it awaited
    all_done: bool = False      # every buyer after the kill got an answer in time


async def buy_across_a_master_kill(cluster, sale: int, port: int, *, before: range,
                                   after: range,
                                   counts: Callable[[str], bool] = lambda rid: True,
                                   timeout: float = 60.0) -> Failover:
    """Buyers ``before`` buy one unit each through two gateway workers; the master on
    ``port`` is SIGKILLed; buyers ``after`` then keep trying (each until admitted or sold
    out). ``resumed_after`` is the time to the first admission ``counts`` accepts. The
    killed node is started again and awaited as a synced replica, whatever happened."""
    seen = Failover()
    workers = [Admission(cluster) for _ in range(2)]
    stop = asyncio.Event()
    killed_at: float | None = None
    resumed_at: float | None = None

    async def buyer(user: int) -> None:
        nonlocal resumed_at
        while not stop.is_set() and user not in seen.admitted:
            try:
                hold = await workers[user % 2].reserve(sale, user, 1, "k")
            except SoldOut:
                return
            except DOWN:
                seen.outages += 1
                await asyncio.sleep(0.05)
                continue
            seen.admitted[user] = hold.reservation_id
            if killed_at is not None and resumed_at is None and counts(hold.reservation_id):
                resumed_at = time.monotonic()

    try:
        await asyncio.gather(*(buyer(u) for u in before))
        os.kill(master_pid(port), signal.SIGKILL)
        killed_at = time.monotonic()
        rest = [asyncio.ensure_future(buyer(u)) for u in after]
        done, _ = await asyncio.wait(rest, timeout=timeout)
        stop.set()
        await asyncio.gather(*rest, return_exceptions=True)
        seen.all_done = len(done) == len(rest)
        if resumed_at is not None:
            seen.resumed_after = resumed_at - killed_at
        else:
            seen.resumed_after = float("inf")
        return seen
    finally:
        for w in workers:
            await w.close()
        await asyncio.to_thread(restart_node, port)
        await wait_cluster_ok(port)
        await wait_replica_synced(port)
