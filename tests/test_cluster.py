"""The gate on a Redis Cluster (3 masters + 3 replicas started by scripts/cluster.sh under
.var/cluster): every script through the per-master batchers and through direct EVALSHA,
exact counts under concurrency with sales on several masters, MOVED followed, the
sold-out flags over cluster pub/sub, and a master SIGKILLed mid-sale.

Skipped, with the reason, when the cluster cannot start here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.admission import Admission
from engine.cluster import ClusterScriptBatcher
from engine.errors import (
    IdempotencyKeyReused,
    PurchaseLimitExceeded,
    SoldOut,
)
from engine.keys import sale_keys, units_by_buyer
from engine.scripts import SCRIPTS
from tests.cluster_support import (
    ROOT,
    buy_across_a_master_kill,
    master_port,
    sales_on_distinct_masters,
)


async def load(cluster, sale: int, quantity: int, *, limit: int = 1,
               hold_ms: int = 600_000) -> None:
    await SCRIPTS.load_tokens(cluster, sale_keys(sale).for_load, (
        1, "1.00", 0, 0, limit, hold_ms, quantity, quantity, 0, 0, "test"))


async def books(cluster, sale: int) -> dict:
    keys = sale_keys(sale)
    initial, held, confirmed = (int(v) for v in await cluster.hmget(
        keys.meta, "initial", "held", "confirmed"))
    tokens = int(await cluster.hget(keys.meta, "tokens"))
    assert initial == tokens + held + confirmed, (initial, tokens, held, confirmed)
    per_user: Counter = Counter()
    units: Counter = Counter()
    for raw in (await cluster.hgetall(keys.res)).values():
        u, q, s, _x, _o = raw.split(b":", 4)
        units[s] += int(q)
        if s in (b"h", b"c"):
            per_user[int(u)] += int(q)
    assert units[b"h"] == held and units[b"c"] == confirmed
    buyers = units_by_buyer(await cluster.hgetall(keys.buyers))
    assert buyers == dict(per_user)
    return {"initial": initial, "tokens": tokens, "held": held, "confirmed": confirmed,
            "per_user": per_user}


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
async def test_every_script_on_the_cluster(batching, cluster):
    sale = 41
    await load(cluster, sale, 3, limit=2, hold_ms=600_000)
    adm = Admission(cluster, batching=batching)
    try:
        hold = await adm.reserve(sale, 1, 2, "k1")
        assert hold.status == "held" and not hold.replayed
        assert (await adm.reserve(sale, 1, 2, "k1")).replayed
        with pytest.raises(IdempotencyKeyReused):
            await adm.reserve(sale, 1, 1, "k1")
        with pytest.raises(PurchaseLimitExceeded):
            await adm.reserve(sale, 1, 1, "k2")
        other = await adm.reserve(sale, 2, 1, "k1")
        with pytest.raises(SoldOut):
            await adm.reserve(sale, 3, 1, "k1")
        assert (await adm.release(hold.reservation_id, user_id=1)).status == "released"
        done = await adm.confirm(other.reservation_id, user_id=2, order_id=7)
        assert done.status == "confirmed"
        assert (await adm.get(other.reservation_id)).order_id == 7
        # A hold past its time is returned by the sweeper's script.
        late = await adm.reserve(sale, 3, 1, "k1")
        keys = sale_keys(sale)
        await cluster.zadd(keys.holds, {late.reservation_id: 1})
        await cluster.hset(keys.res, late.reservation_id, "3:1:h:1:")
        assert await adm.expire_due(sale) == (1, 1, 0)
        assert await books(cluster, sale) == {
            "initial": 3, "tokens": 2, "held": 0, "confirmed": 1, "per_user": {2: 1}}
    finally:
        await adm.close()


async def test_exact_counts_under_concurrency_with_sales_on_every_master(cluster):
    hot, *others = sales_on_distinct_masters(cluster, 3)
    await load(cluster, hot, 150, limit=2)
    for sale in others:
        await load(cluster, sale, 40, limit=1)
    workers = [Admission(cluster) for _ in range(3)]

    async def buyer(user: int) -> list[str]:
        got = []
        for attempt in range(3):  # 300 buyers x 3 attempts on the hot sale's 150 units
            try:
                hold = await workers[(user + attempt) % 3].reserve(hot, user, 1, f"a{attempt}")
                got.append(hold.reservation_id)
            except (SoldOut, PurchaseLimitExceeded):
                pass
        for sale in others:
            try:
                await workers[user % 3].reserve(sale, user, 1, "k")
            except SoldOut:
                pass
        return got

    try:
        results = await asyncio.gather(*(buyer(u) for u in range(1, 301)))
    finally:
        for w in workers:
            await w.close()
    ids = [rid for got in results for rid in got]
    assert len(ids) == len(set(ids)) == 150
    assert max(len(got) for got in results) <= 2
    hot_books = await books(cluster, hot)
    assert hot_books["tokens"] == 0 and hot_books["held"] == 150
    assert max(hot_books["per_user"].values()) <= 2
    for sale in others:
        assert (await books(cluster, sale))["held"] == 40
    masters = {cluster.get_node_from_key(sale_keys(s).meta).name for s in (hot, *others)}
    assert len(masters) == 3


async def test_moved_answers_are_followed_and_the_map_refreshed(cluster):
    sales = sales_on_distinct_masters(cluster, 3)
    for sale in sales:
        await load(cluster, sale, 10)
    batcher = ClusterScriptBatcher.beside(cluster)
    await batcher.refresh()
    wrong = batcher.master_of(sale_keys(sales[0]).meta)
    batcher._slots = [wrong] * len(batcher._slots)  # a stale map: everything on one node
    try:
        for i, sale in enumerate(sales):
            answer = await batcher.call(SCRIPTS.reserve, sale_keys(sale).for_reserve,
                                        (sale, 0, "", 100 + i, 1, "k", ""))
            assert answer[0] == b"ok"
        assert batcher.redirections >= 2  # the two sales not on that node
        await batcher.refresh()
        seen = batcher.redirections
        for sale in sales:
            await batcher.call(SCRIPTS.reserve, sale_keys(sale).for_reserve,
                               (sale, 0, "", 200, 1, "k", ""))
        assert batcher.redirections == seen  # straight to each master now
    finally:
        await batcher.drain()


async def test_sold_out_flags_over_cluster_pub_sub(cluster):
    sale = sales_on_distinct_masters(cluster, 2)[1]
    await load(cluster, sale, 1)
    worker, other = Admission(cluster, refusal_ttl=600), Admission(cluster)
    await worker.start()
    assert await worker.refusals.wait_listening()
    try:
        hold = await other.reserve(sale, 1, 1, "k")
        deadline = time.monotonic() + 10
        while (sale, 0) not in worker.refusals._sold_out:  # the sell-out message
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(SoldOut):
            await worker.reserve(sale, 2, 1, "k")
        await other.release(hold.reservation_id, user_id=1)
        while (sale, 0) in worker.refusals._sold_out:  # the token-return message
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await worker.reserve(sale, 2, 1, "k")).status == "held"
    finally:
        await worker.close()
        await other.close()


async def test_wait_replicas_acknowledges_holds_only_once_replicated(cluster):
    sale = 44
    await load(cluster, sale, 100, limit=1)
    master = cluster.get_node_from_key(sale_keys(sale).meta)
    node = aioredis.Redis(host=master.host, port=master.port)
    before = (await node.info("commandstats")).get("cmdstat_wait", {}).get("calls", 0)
    durable = Admission(cluster, wait_replicas=1)
    too_many = Admission(cluster, wait_replicas=2, wait_timeout=0.1)  # one replica each
    try:
        holds = await asyncio.gather(*(durable.reserve(sale, u, 1, "k") for u in range(1, 51)))
        assert len({h.reservation_id for h in holds}) == 50
        waits = (await node.info("commandstats"))["cmdstat_wait"]["calls"] - before
        assert 1 <= waits <= 50  # holds answered in the same loop turn share one WAIT
        with pytest.raises(RedisTimeoutError):  # not enough replicas: 503, hold kept
            await too_many.reserve(sale, 99, 1, "k")
        again = await durable.reserve(sale, 99, 1, "k")  # the client's retry
        assert again.replayed
        assert (await books(cluster, sale))["held"] == 51
    finally:
        await durable.close()
        await too_many.close()
        await node.aclose()


async def test_a_master_killed_mid_sale_fails_over_and_admissions_resume(cluster):
    sale = 43
    await load(cluster, sale, 400, limit=1)
    port = cluster.get_node_from_key(sale_keys(sale).meta).port
    seen = await buy_across_a_master_kill(cluster, sale, port, before=range(1, 101),
                                          after=range(101, 301))
    assert seen.resumed_after < float("inf"), "admissions did not resume after the failover"
    assert seen.all_done
    assert await master_port(cluster, sale) != port
    # The promoted replica's books balance (each script replicates whole), and every
    # hold acknowledged after the failover is there.
    b = await books(cluster, sale)
    assert b["initial"] == 400 and b["held"] >= 200
    print(f"failover: admissions resumed {seen.resumed_after:.2f} s after SIGKILL, "
          f"{seen.outages} attempts met the outage")


async def test_a_listener_on_a_fresh_cluster_client_subscribes_at_once(cluster_url, cluster,
                                                                       caplog):
    """A gateway's listener may be the first user of its cluster client: it reads the
    slot map itself instead of failing and retrying."""
    from engine.pubsub import ChannelListener

    fresh = aioredis.RedisCluster.from_url(cluster_url)
    got: list = []
    subscribed = asyncio.Event()

    async def on_subscribed() -> None:
        subscribed.set()

    listener = ChannelListener(fresh, "fs:test-channel:0", name="test", on_message=got.append,
                               on_subscribed=on_subscribed)
    await listener.start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        await cluster.publish("fs:test-channel:0", "hello")  # from another node's client
        deadline = time.monotonic() + 10
        while not got:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert got == [b"hello"]
        assert not [r for r in caplog.records if "listener failed" in r.getMessage()]
    finally:
        await listener.stop()
        await fresh.aclose()


@pytest.mark.parametrize("where, setting, says", [
    ("cluster/3", "auto", "a Redis Cluster node, which has only db 0, but FLASHSALE_REDIS_URL "
                          "names db 3: end the URL with /0."),
    ("cluster/0", "0", "is a Redis Cluster node but FLASHSALE_REDIS_CLUSTER=0"),
    ("single/0", "1", "FLASHSALE_REDIS_CLUSTER=1 but Redis at"),
    ("single/5", "1", "FLASHSALE_REDIS_URL names db 5, but a Redis Cluster has only db 0"),
])
def test_cluster_configuration_mistakes_get_one_line(cluster_url, where, setting, says):
    """`flashsale` refuses to start on them, in one line (and exit code 2)."""
    import sys

    server, db = where.split("/")
    base = cluster_url.rsplit("/", 1)[0] if server == "cluster" else (
        os.environ.get("FLASHSALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15").rsplit("/", 1)[0])
    from tests.conftest import TEST_DATABASE_URL

    env = {**os.environ, "FLASHSALE_REDIS_URL": f"{base}/{db}",
           "FLASHSALE_REDIS_CLUSTER": setting, "FLASHSALE_DATABASE_URL": TEST_DATABASE_URL}
    done = subprocess.run([sys.executable, "-m", "cli.main", "reconcile", "--metrics-port",
                           "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], done.stderr


async def test_the_cluster_is_detected_and_a_single_server_is_not(cluster_url):
    from engine.connections import open_redis
    from tests.conftest import TEST_REDIS_URL, make_settings

    for url, kind in ((cluster_url, aioredis.RedisCluster), (TEST_REDIS_URL, aioredis.Redis)):
        client = await open_redis(make_settings(redis_url=url))
        try:
            assert isinstance(client, kind)
            await client.ping()
        finally:
            await client.aclose()

