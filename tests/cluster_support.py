"""The local Redis Cluster for tests (scripts/cluster.sh, 3 masters + 3 replicas under
.var/cluster): starting it once per session, and helpers the cluster tests share. The
fixtures themselves are in conftest.py."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.cluster import ClusterScriptBatcher
from engine.errors import Unavailable
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


async def wait_cluster_ok(port: int, timeout: float = 30.0) -> None:
    client = aioredis.Redis(port=port, socket_timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                info = await client.execute_command("CLUSTER INFO")  # parsed to a dict
                if info.get("cluster_state") == "ok":
                    return
            except DOWN:
                pass
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
