"""The reconciler as a real process: kills, restarts, outages, expiry, audit, recovery."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from engine.keys import sale_keys
from tests.conftest import TEST_DATABASE_URL
from tests.proxy import TcpProxy
from tests.reconciler_proc import ROOT, ReconcilerProcess, free_port, new_sale, wait_drained

pytestmark = pytest.mark.slow


async def _expect_postgres_matches_redis(pool, redis, sale_id: int, holds: list) -> None:
    rows = await pool.fetch("SELECT reservation_id, user_id, quantity, status FROM"
                            " sale_reservations WHERE sale_id = $1", sale_id)
    assert sorted(r["reservation_id"] for r in rows) == sorted(h.reservation_id for h in holds)
    counters = await pool.fetchrow(
        "SELECT f.held_qty, i.reserved_qty FROM flash_sales f JOIN inventory i USING"
        " (product_id) WHERE sale_id = $1", sale_id)
    assert counters["held_qty"] == counters["reserved_qty"] == len(holds)
    assert int(await redis.hget(sale_keys(sale_id).meta, "held")) == len(holds)


async def test_sigkill_mid_burst_loses_nothing_and_doubles_nothing(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 500)
    holds = []
    for round_ in range(4):
        proc = ReconcilerProcess(settings, f"r{round_}").start()
        procs.append(proc)
        await asyncio.sleep(0.3)
        for _ in range(4):  # a burst of 100 admissions in small waves while it applies
            holds += await asyncio.gather(*(
                admission.reserve(sale, 10_000 + len(holds) + i, 1, "k") for i in range(25)))
            await asyncio.sleep(0.01)
        proc.kill()  # SIGKILL at an arbitrary moment: mid-read, mid-batch or mid-ack
    assert len(holds) == 400
    final = ReconcilerProcess(settings, "final").start()
    procs.append(final)
    await wait_drained(redis, pool, sale, rows=400)
    await _expect_postgres_matches_redis(pool, redis, sale, holds)


async def test_two_reconcilers_together_give_the_same_result(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 300, per_user_limit=1)
    procs += [ReconcilerProcess(settings, "a").start(), ReconcilerProcess(settings, "b").start()]
    holds = await asyncio.gather(*(admission.reserve(sale, i, 1, "k") for i in range(300)))
    confirmed = holds[:100]
    for h in confirmed:
        await admission.confirm(h.reservation_id, user_id=h.user_id, order_id=h.user_id + 1)
    for h in holds[100:150]:
        await admission.release(h.reservation_id, user_id=h.user_id)
    await wait_drained(redis, pool, sale, rows=300)
    by_status = dict(await pool.fetch(
        "SELECT status, sum(quantity) FROM sale_reservations WHERE sale_id = $1 GROUP BY 1",
        sale))
    assert by_status == {"confirmed": 100, "released": 50, "held": 150}
    sale_row = await pool.fetchrow("SELECT * FROM flash_sales WHERE sale_id = $1", sale)
    assert (sale_row["held_qty"], sale_row["confirmed_qty"], sale_row["released_qty"]) == (
        150, 100, 50)
    order_ids = await pool.fetch("SELECT reservation_id, order_id FROM sale_reservations"
                                 " WHERE status = 'confirmed'")
    assert all(r["order_id"] is not None for r in order_ids)


async def test_a_two_second_hold_expires_everywhere(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 1, hold_seconds=2)
    procs.append(ReconcilerProcess(settings, "x").start())
    hold = await admission.reserve(sale, 1, 1, "k")
    await wait_drained(redis, pool, sale, rows=1)
    assert await pool.fetchval("SELECT status FROM sale_reservations") == "held"
    for _ in range(300):  # the hold lasts 2 s; a busy machine may take longer to sweep it
        await asyncio.sleep(0.1)
        if await pool.fetchval("SELECT status FROM sale_reservations") == "expired":
            break
    assert await pool.fetchval("SELECT status FROM sale_reservations") == "expired"
    assert (await admission.get(hold.reservation_id)).status == "expired"
    assert (await sales.view(sale)).remaining == 1  # back on sale
    assert await pool.fetchval("SELECT reserved_qty FROM inventory") == 0
    assert (await admission.reserve(sale, 2, 1, "k")).status == "held"


async def test_postgres_outage_then_back_nothing_lost(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    from urllib.parse import urlsplit
    target = urlsplit(TEST_DATABASE_URL)
    proxy = await TcpProxy(target.hostname, target.port or 5432).start()
    url = TEST_DATABASE_URL.replace(f"{target.hostname}:{target.port}",
                                    f"127.0.0.1:{proxy.port}")
    sale = await new_sale(sales, product_factory, 200)
    port = free_port()
    proc = ReconcilerProcess(settings, "pg", database_url=url, metrics_port=port).start()
    procs.append(proc)
    holds = list(await asyncio.gather(*(admission.reserve(sale, i, 1, "k") for i in range(50))))
    await wait_drained(redis, pool, sale, rows=50)
    await proxy.cut()
    holds += await asyncio.gather(*(admission.reserve(sale, 100 + i, 1, "k") for i in range(100)))
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 503:
                    break
        assert resp.status == 503
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        assert "flashsale_reconciler_postgres_errors_total" in text
    assert await pool.fetchval("SELECT count(*) FROM sale_reservations") == 50
    await proxy.restore()
    await wait_drained(redis, pool, sale, rows=150)
    await _expect_postgres_matches_redis(pool, redis, sale, holds)
    assert proc.proc.poll() is None  # it never crashed
    await proxy.close()


async def test_sigterm_finishes_the_batch_and_exits_zero(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 300)
    proc = ReconcilerProcess(settings, "t").start()
    procs.append(proc)
    await proc.ready()
    holds = await asyncio.gather(*(admission.reserve(sale, i, 1, "k") for i in range(300)))
    assert await asyncio.to_thread(proc.terminate) == 0
    pending = await redis.xpending(sale_keys(sale).events, "reconciler")
    assert pending["pending"] == 0
    applied = await pool.fetchval("SELECT count(*) FROM sale_reservations")
    procs.append(ReconcilerProcess(settings, "t2").start())
    await wait_drained(redis, pool, sale, rows=300)
    assert applied <= 300
    await _expect_postgres_matches_redis(pool, redis, sale, holds)


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_audit_passes_on_a_healthy_sale_and_fails_on_a_corrupted_one(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 20, per_user_limit=2)
    procs.append(ReconcilerProcess(settings, "audit").start())
    holds = await asyncio.gather(*(admission.reserve(sale, i, 1, "k") for i in range(12)))
    await admission.confirm(holds[0].reservation_id, user_id=0, order_id=9)
    await admission.release(holds[1].reservation_id, user_id=1)
    await wait_drained(redis, pool, sale, rows=12)
    ok = await asyncio.to_thread(_cli, settings, "audit", str(sale), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["sales"][0]["oversold"] == 0
    assert report["sales"][0]["postgres"] == {"held": 10, "confirmed": 1, "released": 1,
                                              "expired": 0}
    status = await asyncio.to_thread(_cli, settings, "sale", "status", str(sale), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["reconciler_lag"] == 0
    await redis.hincrby(sale_keys(sale).meta, "tokens", 3)  # tamper: three units from nowhere
    bad = await asyncio.to_thread(_cli, settings, "audit", str(sale))
    assert bad.returncode == 1
    assert "do not balance" in bad.stdout


async def test_recover_rebuilds_redis_from_postgres(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 10, per_user_limit=2)
    procs.append(ReconcilerProcess(settings, "rec").start())
    holds = await asyncio.gather(*(admission.reserve(sale, i, 1, f"k{i}") for i in range(6)))
    await admission.confirm(holds[0].reservation_id, user_id=0, order_id=1)
    await admission.release(holds[1].reservation_id, user_id=1)
    await wait_drained(redis, pool, sale, rows=6)
    before = await sales.counts(sale)
    refused = await asyncio.to_thread(_cli, settings, "sale", "recover", str(sale))
    assert refused.returncode == 1 and "still in Redis" in refused.stderr
    await redis.delete(*sale_keys(sale).all)  # Redis restarted without AOF
    done = await asyncio.to_thread(_cli, settings, "sale", "recover", str(sale))
    assert done.returncode == 0, done.stderr
    after = await sales.counts(sale)
    assert after == before  # tokens 5, held 4, confirmed 1 of 10
    replay = await admission.reserve(sale, 2, 1, "k2")
    assert replay.replayed and replay.reservation_id == holds[2].reservation_id
    fresh = await admission.reserve(sale, 50, 1, "new")
    from engine.keys import reservation_number
    assert reservation_number(fresh.reservation_id) > max(
        reservation_number(h.reservation_id) for h in holds)  # never an id given before
    with pytest.raises(Exception, match="limit"):
        await admission.reserve(sale, 0, 2, "more")  # user 0 bought 1, limit 2
    audit = await asyncio.to_thread(_cli, settings, "audit", str(sale))
    assert audit.returncode == 0, audit.stdout



async def _to_the_layout_before_the_lean_gate(redis, sale: int) -> None:
    """Rewrite a sale's Redis state the way the version before the lean gate kept it:
    tokens and seq in keys of their own, buyers (user -> units) and idem
    ("<user>:<key>" -> id) as two hashes."""
    keys = sale_keys(sale)
    old_tokens, old_buyers, old_idem, old_seq, _old_rl = keys.legacy
    tokens, seq = await redis.hmget(keys.meta, "tokens", "seq")
    await redis.set(old_tokens, tokens)
    await redis.set(old_seq, seq)
    for field, value in (await redis.hgetall(keys.buyers)).items():
        kind, _, rest = field.decode().partition(":")
        if kind == "u":
            await redis.hset(old_buyers, rest, value)
        elif kind == "k":
            await redis.hset(old_idem, rest, value)
    await redis.hdel(keys.meta, "tokens", "seq")
    await redis.delete(keys.buyers)


async def test_a_sale_in_the_old_key_layout_is_refused_then_moved_by_recover(
        sales, product_factory, admission, redis, pool, settings, procs) -> None:
    """Upgrading with a live sale: the gate refuses it with a 503 naming the fix (never
    reads its tokens as zero), and `sale recover --force` moves it to today's layout with
    its holds, buyers, idempotency keys and id sequence."""
    from engine.errors import Unavailable
    from engine.keys import reservation_number

    sale = await new_sale(sales, product_factory, 10, per_user_limit=2)
    procs.append(ReconcilerProcess(settings, "rec").start())
    holds = await asyncio.gather(*(admission.reserve(sale, i, 1, f"k{i}") for i in range(4)))
    await admission.confirm(holds[0].reservation_id, user_id=0, order_id=1)
    await wait_drained(redis, pool, sale, rows=4)
    before = await sales.counts(sale)
    await _to_the_layout_before_the_lean_gate(redis, sale)
    with pytest.raises(Unavailable, match=f"recover --force {sale}"):
        await admission.reserve(sale, 9, 1, "new")
    with pytest.raises(Unavailable, match="recover --force"):
        await admission.release(holds[1].reservation_id, user_id=1)
    await redis.zadd(sale_keys(sale).holds, {holds[3].reservation_id: 1})  # due now
    assert await admission.expire_due(sale) == (0, 0, 0)  # the sweeper goes on, unharmed
    assert not await redis.hexists(sale_keys(sale).meta, "tokens")
    done = await asyncio.to_thread(_cli, settings, "sale", "recover", "--force", str(sale))
    assert done.returncode == 0, done.stderr
    assert await redis.exists(*sale_keys(sale).legacy) == 0
    assert await sales.counts(sale) == before  # tokens 6, held 3, confirmed 1 of 10
    replay = await admission.reserve(sale, 2, 1, "k2")
    assert replay.replayed and replay.reservation_id == holds[2].reservation_id
    fresh = await admission.reserve(sale, 50, 1, "new")
    assert reservation_number(fresh.reservation_id) > max(
        reservation_number(h.reservation_id) for h in holds)
    with pytest.raises(Exception, match="limit"):
        await admission.reserve(sale, 1, 2, "more")  # user 1 holds 1, limit 2
    await admission.release(holds[1].reservation_id, user_id=1)
    await wait_drained(redis, pool, sale, rows=5)
    audit = await asyncio.to_thread(_cli, settings, "audit", str(sale))
    assert audit.returncode == 0, audit.stdout

async def test_a_sale_unknown_to_postgres_is_left_unread_not_fatal(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    """Redis left over from another database: its sale is reported, the others proceed."""
    from engine.keys import ACTIVE_SALES
    from engine.scripts import SCRIPTS

    stray = sale_keys(9999)
    await SCRIPTS.load_tokens(redis, stray.for_load,
                              (1, "1.00", 0, 0, 5, 600_000, 5, 5, 0, 0, "stray"))
    await redis.sadd(ACTIVE_SALES, 9999)
    await admission.reserve(9999, 1, 1, "k")
    sale = await new_sale(sales, product_factory, 10)
    proc = ReconcilerProcess(settings, "stray").start()
    procs.append(proc)
    await admission.reserve(sale, 1, 1, "k")
    await wait_drained(redis, pool, sale, rows=1)
    assert proc.proc.poll() is None
    assert "unknown to Postgres" in proc.log.read_text()
    report = await asyncio.to_thread(_cli, settings, "audit", "--wait", "0")
    assert report.returncode == 1 and "unknown to Postgres" in report.stdout
