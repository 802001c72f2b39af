"""Processes that find out from ``INFO cluster`` whether Redis is a cluster
(FLASHSALE_REDIS_CLUSTER unset), started while the node they name does not answer.

They cannot know, so they start as one server's clients and keep asking. Once the node
answers that it is a cluster node, they restart themselves as cluster clients (the
gateway in place, keeping its pid; a supervised worker through its parent), and meanwhile
a reservation is a 503, never a 500. The node is reached through a TCP proxy that the
test cuts and restores (tests/proxy.py); the sales live on other masters, so a client of
one server would be answered MOVED.

Skipped, with the reason, when the local cluster cannot start here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from urllib.parse import urlparse

import aiohttp
import pytest

from tests.cluster_support import ROOT
from tests.conftest import make_settings
from tests.proxy import TcpProxy
from tests.reconciler_proc import ReconcilerProcess, free_port, wait_answering, wait_drained
from tests.test_cluster_service import master_of, start_api

pytestmark = pytest.mark.slow


async def _other_masters_sales(api, cluster, node: str, count: int) -> list[dict]:
    """Sales whose keys are on masters other than ``node`` (host:port)."""
    from tests.conftest import create_sale
    chosen = []
    for _ in range(60):
        sale = await create_sale(api, quantity=5, per_user_limit=5)
        if master_of(cluster, sale["sale_id"]) != node:
            chosen.append(sale)
            if len(chosen) == count:
                return chosen
    raise AssertionError(f"no sales off {node}")


def _serve(redis_url: str, port: int, workers: int, log) -> subprocess.Popen:
    settings = make_settings()
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_SECRET": settings.secret,
           "FLASHSALE_RATE_LIMIT": "0"}
    for name in ("FLASHSALE_REDIS_CLUSTER", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


async def _reserve_until_held(base: str, sale: dict, headers: dict,
                              timeout: float = 45.0) -> tuple[dict, list[int]]:
    """POST the same reservation (one idempotency key) until it is held; every status
    seen on the way (connection refused while a process restarts is none)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.post(f"{base}/api/v1/sales/{sale['sale_id']}/reservations",
                                     headers=headers,
                                     json={"quantity": 1, "idempotency_key": "first"}) as resp:
                    seen.append(resp.status)
                    if resp.status in (200, 201):
                        return await resp.json(), seen
                    assert resp.status == 503, (resp.status, await resp.text())
                    assert resp.headers.get("Retry-After"), resp.headers
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"never held; statuses seen: {sorted(set(seen))}")


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_gateway_started_before_the_cluster_answers(cluster, cluster_url, database,
                                                            pool, workers, tmp_path):
    seed = urlparse(cluster_url)
    node = f"{seed.hostname}:{seed.port}"
    proxy = await TcpProxy(seed.hostname, seed.port).start()
    await proxy.cut()  # the named node does not answer
    api = await start_api(make_settings(redis_url=cluster_url))
    log_path = tmp_path / "gateway.log"
    port = free_port()
    with log_path.open("wb") as log:
        proc = _serve(f"redis://127.0.0.1:{proxy.port}/0", port, workers, log)
    try:
        sale, = await _other_masters_sales(api, cluster, node, 1)
        buyer = await api.signup()
        base = f"http://127.0.0.1:{port}"
        await wait_answering(base, proc)
        status, _ = await _post(base, sale, buyer["headers"])
        assert status == 503, status  # Redis does not answer: 503, as any outage
        await proxy.restore()
        held, seen = await _reserve_until_held(base, sale, buyer["headers"])
        assert held["status"] == "held" and held["sale_id"] == sale["sale_id"], held
        assert 500 not in seen, seen
        assert proc.poll() is None  # the same process (the parent, with workers) serves
        text = log_path.read_text()
        assert "is a Redis Cluster node" in text, text
        # And it stays a cluster client: another sale, another master, held at once.
        again, = await _other_masters_sales(api, cluster, node, 1)
        status, body = await _post(base, again, buyer["headers"])
        assert status == 201, body
    finally:
        proc.terminate()
        proc.wait(20)
        await api.client.close()
        await proxy.close()


async def _post(base: str, sale: dict, headers: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/api/v1/sales/{sale['sale_id']}/reservations",
                             headers=headers,
                             json={"quantity": 1, "idempotency_key": "first"}) as resp:
            return resp.status, await resp.json()


async def test_a_script_answered_moved_is_an_outage_to_a_one_server_client(cluster, cluster_url):
    """What the hot path of a process taken in by a silent node meets meanwhile: its
    script batcher, talking to one node as to one server, is answered MOVED for a sale on
    another master. That is Redirected, an outage (503 with Retry-After), not a bug."""
    from engine.batching import ScriptBatcher
    from engine.errors import REDIS_DOWN, Redirected, as_unavailable
    from engine.keys import sale_keys
    from engine.scripts import SCRIPTS
    from tests.cluster_support import sales_on_distinct_masters

    seed = urlparse(cluster_url)
    node = f"{seed.hostname}:{seed.port}"
    sale = next(s for s in sales_on_distinct_masters(cluster, 3)
                if cluster.get_node_from_key(sale_keys(s).meta).name != node)
    await SCRIPTS.load_tokens(cluster, sale_keys(sale).for_load, (
        1, "1.00", 0, 0, 1, 600_000, 5, 5, 0, 0, "test"))
    batcher = ScriptBatcher(host=seed.hostname, port=seed.port)
    try:
        with pytest.raises(Redirected) as caught:
            await batcher.call(SCRIPTS.reserve, sale_keys(sale).for_reserve,
                               (sale, 0, "", 7, 1, "k", ""))
        assert str(caught.value).startswith("MOVED "), caught.value
        assert isinstance(caught.value, REDIS_DOWN)
        outage = as_unavailable(caught.value)
        assert outage is not None and outage.status == 503 and outage.dependency == "redis"
    finally:
        await batcher.drain()


async def test_a_reconciler_started_before_the_cluster_answers(cluster, cluster_url, database,
                                                               pool, procs):
    seed = urlparse(cluster_url)
    node = f"{seed.hostname}:{seed.port}"
    proxy = await TcpProxy(seed.hostname, seed.port).start()
    await proxy.cut()
    settings = make_settings(redis_url=cluster_url)
    api = await start_api(settings)
    through = make_settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    reconciler = ReconcilerProcess(through, "cl-detect")
    reconciler.env.pop("FLASHSALE_REDIS_CLUSTER", None)
    procs.append(reconciler.start())
    try:
        await reconciler.ready()
        sales = await _other_masters_sales(api, cluster, node, 2)
        buyer = await api.signup()
        for sale in sales:
            status, body = await api.call(
                "POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                headers=buyer["headers"], json={"quantity": 1, "idempotency_key": "k"})
            assert status == 201, body
        await proxy.restore()
        for sale in sales:
            await wait_drained(cluster, pool, sale["sale_id"], rows=1, timeout=45)
        assert reconciler.proc.poll() is None, reconciler.log.read_text()
        assert "is a Redis Cluster node" in reconciler.log.read_text()
    finally:
        reconciler.stop()  # before the proxy goes: nothing left connecting through it
        await api.client.close()
        await proxy.close()
