"""A Redis that is up but refuses commands for now (engine.errors.REFUSALS) is an outage:
a 503 with Retry-After on the hot path (the script batcher) and on redis-py's (a cart),
a reconciler that waits instead of exiting, and the service back by itself once Redis
takes commands again. Each refusal is staged on a private redis-server on its own port:
out of memory under ``noeviction`` (OOM), too few replicas (NOREPLICAS), turned into a
replica (READONLY), and restarted with a dataset that loads slowly (LOADING)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import (
    Api,
    GatewayServer,
    assert_error,
    create_product,
    create_sale,
    make_settings,
)
from tests.reconciler_proc import ReconcilerProcess, wait_drained
from tests.test_redis_transports import REDIS_SERVER, free_port, private_redis

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server binary")]

# (what to set, what undoes it): each makes the private Redis refuse writes with one code.
REFUSING = {
    "OOM": ([("CONFIG", "SET", "maxmemory-policy", "noeviction"),
             ("CONFIG", "SET", "maxmemory", "1")], [("CONFIG", "SET", "maxmemory", "0")]),
    "NOREPLICAS": ([("CONFIG", "SET", "min-replicas-to-write", "1")],
                   [("CONFIG", "SET", "min-replicas-to-write", "0")]),
    # A replica of a master that is not there: it keeps its data and refuses writes.
    "READONLY": ([("REPLICAOF", "127.0.0.1", str(free_port()))], [("REPLICAOF", "NO", "ONE")]),
}


@pytest.fixture
def private(tmp_path: Path):
    port = free_port()
    with private_redis(tmp_path, "--port", str(port), "--bind", "127.0.0.1",
                       ping=["redis-cli", "-p", str(port), "PING"]):
        yield port


async def _commands(port: int, commands: list[tuple[str, ...]]) -> None:
    client = aioredis.Redis(port=port)
    try:
        for command in commands:
            await client.execute_command(*command)
    finally:
        await client.aclose()


async def _reserve(api: Api, sale: dict, buyer: dict, key: str) -> tuple[int, object, dict]:
    resp = await api.client.post(f"/api/v1/sales/{sale['sale_id']}/reservations",
                                 headers=buyer["headers"],
                                 json={"quantity": 1, "idempotency_key": key})
    return resp.status, await resp.json(), dict(resp.headers)


@pytest.mark.parametrize("code", sorted(REFUSING))
async def test_a_redis_refusing_writes_is_a_503_and_the_gateway_recovers(
        private, database, pool, code, caplog):
    settings = make_settings(redis_url=f"redis://127.0.0.1:{private}/0")
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    api = Api(client)
    try:
        sale = await create_sale(api, quantity=5, per_user_limit=5)
        product = await create_product(api)
        buyer = await api.signup()
        status, body, _ = await _reserve(api, sale, buyer, "before")
        assert status == 201, body
        refuse, undo = REFUSING[code]
        await _commands(private, refuse)
        caplog.set_level(logging.WARNING, logger="flashsale.gateway")
        try:
            status, body, headers = await _reserve(api, sale, buyer, "during")
            assert status == 503, body  # the hot path: the script batcher
            assert_error(body, "unavailable")
            assert headers.get("Retry-After") == "1", headers
            assert body["error"]["details"] == {"dependency": "redis"}, body
            status, body = await api.call(
                "POST", "/api/v1/cart/items", headers=buyer["headers"],
                json={"product_id": product["product_id"], "quantity": 1})
            assert status == 503, body  # redis-py's client: a cart is a Redis hash
            assert_error(body, "unavailable")
            said = " ".join(r.getMessage() for r in caplog.records)
            assert "answered 503" in said and code in said, said  # the log says why
        finally:
            await _commands(private, undo)
        status, body, _ = await _reserve(api, sale, buyer, "during")  # the same key again
        assert status == 201, body
        _, public = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}", expect=200)
        assert public["remaining"] == 3  # two holds: nothing taken by the refused attempt
    finally:
        await client.close()


async def test_a_redis_loading_its_data_is_a_503_until_it_has(tmp_path, database, pool,
                                                               caplog):
    """Redis restarted on a dataset that takes seconds to load answers LOADING meanwhile:
    503s (first connection refused, then LOADING), never a 500, then holds again."""
    port = free_port()
    ping = ["redis-cli", "-p", str(port), "PING"]
    server = ["--port", str(port), "--bind", "127.0.0.1"]
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    client = TestClient(GatewayServer(create_app(settings)))
    restarted = None
    try:
        with private_redis(tmp_path, *server, ping=ping):
            await client.start_server()
            api = Api(client)
            sale = await create_sale(api, quantity=5, per_user_limit=5)
            buyer = await api.signup()
            assert (await _reserve(api, sale, buyer, "before"))[0] == 201
            filler = [("MSET", *(f"filler:{i}:{j}" for j in range(200) for _ in (0, 1)))
                      for i in range(100)]
            await _commands(port, [*filler, ("SAVE",)])
        # The same port and directory, the RDB loaded at 100 µs a key: ~2 s of LOADING,
        # answering (LOADING) between every KiB loaded.
        log = tmp_path / "redis-restarted.log"
        caplog.set_level(logging.WARNING, logger="flashsale.gateway")
        restarted = subprocess.Popen(
            [REDIS_SERVER, *server, "--dir", str(tmp_path), "--save", "", "--appendonly",
             "no", "--key-load-delay", "100", "--loading-process-events-interval-bytes",
             "1024", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        statuses: list[int] = []
        deadline = time.monotonic() + 60
        while True:
            status, body, _ = await _reserve(api, sale, buyer, "after")
            statuses.append(status)
            if status == 201:
                break
            assert status == 503, (status, body)
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.05)
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "Redis said LOADING" in said, (statuses, said)  # not only refused connections
        probe = aioredis.Redis(port=port)
        try:
            assert await probe.dbsize() >= 20000  # it did load (the sale with it)
        finally:
            await probe.aclose()
    finally:
        await client.close()
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)


async def test_a_reconciler_waits_out_a_refusing_redis(private, database, pool, procs):
    settings = make_settings(redis_url=f"redis://127.0.0.1:{private}/0")
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    api = Api(client)
    reconciler = ReconcilerProcess(settings, "refusals")
    procs.append(reconciler.start())
    redis = aioredis.Redis(port=private)
    try:
        await reconciler.ready()
        sale = await create_sale(api, quantity=5, per_user_limit=5)
        buyer = await api.signup()
        assert (await _reserve(api, sale, buyer, "k1"))[0] == 201
        await wait_drained(redis, pool, sale["sale_id"], rows=1)
        refuse, undo = REFUSING["OOM"]
        await _commands(private, refuse)
        # Sweeps of the live sale (its expiry script) and reads of its stream (XREADGROUP
        # writes to the group) are refused meanwhile.
        await asyncio.sleep(2.0)
        assert reconciler.proc.poll() is None, reconciler.log.read_text()
        await _commands(private, undo)
        status, body, _ = await _reserve(api, sale, buyer, "k2")
        assert status == 201, body
        await wait_drained(redis, pool, sale["sale_id"], rows=2)
        assert reconciler.proc.poll() is None
        text = reconciler.log.read_text()
        assert "OOM" in text or "maxmemory" in text, text
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()
        await client.close()


async def test_a_refusing_master_of_the_cluster_is_an_outage(cluster, cluster_url):
    """On a Redis Cluster too, by both ways commands go: redis-py's cluster client (its
    nodes' parser) and the per-master script batchers."""
    from engine.cluster import ClusterScriptBatcher
    from engine.connections import create_redis
    from engine.errors import REDIS_DOWN, Refused
    from engine.keys import sale_keys
    from engine.scripts import SCRIPTS

    sale = 5
    keys = sale_keys(sale)
    await SCRIPTS.load_tokens(cluster, keys.for_load, (
        1, "1.00", 0, 0, 1, 600_000, 5, 5, 0, 0, "test"))
    node = cluster.get_node_from_key(keys.meta)
    client = create_redis(make_settings(redis_url=cluster_url), cluster=True)
    batcher = ClusterScriptBatcher.beside(client)
    await cluster.execute_command("CONFIG", "SET", "min-replicas-to-write", "5",
                                  target_nodes=node)
    try:
        with pytest.raises(REDIS_DOWN) as caught:
            await client.hset(keys.meta, "probe", "1")
        assert isinstance(caught.value, Refused), repr(caught.value)
        with pytest.raises(Refused, match=r"^NOREPLICAS"):
            await batcher.call(SCRIPTS.reserve, keys.for_reserve, (sale, 0, "", 7, 1, "k", ""))
    finally:
        await cluster.execute_command("CONFIG", "SET", "min-replicas-to-write", "0",
                                      target_nodes=node)
        await batcher.drain()
        await client.aclose()
    assert (await SCRIPTS.reserve(cluster, keys.for_reserve,
                                  (sale, 0, "", 7, 1, "k", "")))[0][0] == b"ok"


async def test_a_command_meeting_a_refusing_redis_says_so_in_one_line(private, database,
                                                                       product_factory):
    product_id = await product_factory(stock=10)
    env = {**os.environ, "FLASHSALE_DATABASE_URL": make_settings().database_url,
           "FLASHSALE_REDIS_URL": f"redis://127.0.0.1:{private}/0"}

    def flashsale(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    created = await asyncio.to_thread(flashsale, "sale", "create", "--product-id",
                                      str(product_id), "--quantity", "5", "--price", "1.00",
                                      "--json")
    assert created.returncode == 0, created.stderr
    sale_id = json.loads(created.stdout)["sale_id"]
    await _commands(private, REFUSING["OOM"][0])
    done = await asyncio.to_thread(flashsale, "sale", "pause", str(sale_id))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "refuses for now (OOM" in lines[0] and "retry once" in lines[0], lines[0]
