"""Integrity when Redis loses writes and when one event is poison (issue 10), against real
Redis and Postgres: ids never issued twice, reused ids recorded instead of merged, poison
events parked while the stream goes on, a pool that waits instead of lying, 503 for a sale
Redis lost, the per-reservation audit and the forced repair."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chaos.servers import PrivateRedis
from engine.connections import create_redis
from engine.events import SaleEvent
from engine.keys import buyer_key_field, buyer_units_field, reservation_number, sale_keys
from reconciler.apply import apply_batch
from tests.conftest import assert_error, create_sale, make_settings
from tests.reconciler_proc import ROOT, ReconcilerProcess, new_sale, wait_drained


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)


# -- ids -------------------------------------------------------------------------------------
@hsettings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(before=st.integers(1, 60), after=st.integers(1, 60), forget=st.sampled_from(
    ["delete", "zero", "halfway"]))
async def test_ids_never_repeat_when_redis_forgets_its_sequence(
        sales, product_factory, admission, redis, before, after, forget) -> None:
    """Redis losing its last writes sends ``seq`` back: the ids issued next are new."""
    sale = await new_sale(sales, product_factory, before + after, per_user_limit=1)
    first = await asyncio.gather(*(admission.reserve(sale, i, 1, "k") for i in range(before)))
    meta = sale_keys(sale).meta
    if forget == "delete":
        await redis.hdel(meta, "seq")
    elif forget == "zero":
        await redis.hset(meta, "seq", 0)
    else:
        await redis.hset(meta, "seq", sorted(reservation_number(h.reservation_id) for h in first)[
            before // 2])
    second = await asyncio.gather(*(admission.reserve(sale, 10_000 + i, 1, "k")
                                    for i in range(after)))
    ids = [h.reservation_id for h in first + second]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"{sale}-") and i.split("-")[1].isdigit() for i in ids)


# -- owner conflicts -------------------------------------------------------------------------
async def _bare_sale(pool) -> int:
    product = await pool.fetchval(
        "INSERT INTO products (name, price) VALUES ('P', 1) RETURNING product_id")
    await pool.execute("INSERT INTO inventory (product_id, available_qty) VALUES ($1, 0)",
                       product)
    return await pool.fetchval(
        "INSERT INTO flash_sales (product_id, quantity, price, status) VALUES ($1, 10, 1,"
        " 'ready') RETURNING sale_id", product)


@hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(other=st.tuples(st.integers(1, 5), st.integers(1, 3), st.sampled_from(["a", "b"]))
       .filter(lambda o: o != (1, 1, "a")),
       later=st.sampled_from(["same batch", "next batch"]))
async def test_a_reused_id_with_another_owner_is_recorded_never_merged(pool, other,
                                                                        later) -> None:
    sale = await _bare_sale(pool)
    user, qty, key = other
    first = SaleEvent(stream_id="1-1", sale_id=sale, type="reserved", reservation_id=f"{sale}-7",
                      user_id=1, quantity=1, at_ms=1, expires_ms=2, idempotency_key="a")
    second = SaleEvent(stream_id="1-2", sale_id=sale, type="reserved",
                       reservation_id=f"{sale}-7", user_id=user, quantity=qty, at_ms=1,
                       expires_ms=2, idempotency_key=key)
    gone = SaleEvent(stream_id="1-3", sale_id=sale, type="expired", reservation_id=f"{sale}-7",
                     user_id=user, quantity=qty, at_ms=3, expires_ms=2)
    batches = [[first, second, gone]] if later == "same batch" else [[first], [second, gone]]
    for batch in batches:
        async with pool.acquire() as conn, conn.transaction():
            await apply_batch(conn, batch)
    row = await pool.fetchrow("SELECT user_id, quantity, status, idempotency_key FROM"
                              " sale_reservations WHERE reservation_id = $1", f"{sale}-7")
    # Only ``reserved`` carries the idempotency key: a later event of a reused id with the
    # same user and quantity cannot be told from one of the first reservation.
    same_owner = (user, qty) == (1, 1)
    assert dict(row) == {"user_id": 1, "quantity": 1, "idempotency_key": "a",
                         "status": "expired" if same_owner else "held"}
    held = await pool.fetchval("SELECT held_qty FROM flash_sales WHERE sale_id = $1", sale)
    assert held == (0 if same_owner else 1)
    conflicts = await pool.fetch("SELECT stream_id, user_id, known_user_id FROM"
                                 " sale_event_conflicts WHERE sale_id = $1 ORDER BY stream_id",
                                 sale)
    # The expired event names the other owner: also refused, also recorded.
    expected = ["1-2"] if same_owner else ["1-2", "1-3"]
    assert [c["stream_id"] for c in conflicts] == expected
    assert all(c["known_user_id"] == 1 for c in conflicts)


# -- poison events ---------------------------------------------------------------------------
async def test_poison_events_are_parked_and_later_holds_reach_postgres(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 60, per_user_limit=1)
    proc = ReconcilerProcess(settings, "poison", FLASHSALE_RECONCILE_BATCH="50").start()
    procs.append(proc)
    before = await asyncio.gather(*(admission.reserve(sale, i, 1, f"k{i}") for i in range(20)))
    await wait_drained(redis, pool, sale, rows=20)
    stream = sale_keys(sale).events
    # What Postgres cannot store (a NUL byte) and what cannot be read at all.
    await redis.xadd(stream, {"t": "reserved", "r": f"{sale}-1", "u": 999, "q": 1,
                              "x": 1, "ts": 1, "k": b"bad\x00key"})
    await redis.xadd(stream, {"t": "reserved", "r": f"{sale}-2", "u": "not-a-number",
                              "q": 1, "x": 1, "ts": 1})
    after = await asyncio.gather(*(admission.reserve(sale, 100 + i, 1, f"k{i}")
                                   for i in range(20)))
    await wait_drained(redis, pool, sale, rows=40, timeout=15)
    rows = {r["reservation_id"] for r in await pool.fetch(
        "SELECT reservation_id FROM sale_reservations WHERE sale_id = $1", sale)}
    assert rows == {h.reservation_id for h in before + after}
    letters = await pool.fetch("SELECT raw, sqlstate, error FROM sale_dead_letters WHERE"
                               " sale_id = $1 ORDER BY stream_id", sale)
    assert len(letters) == 2
    assert json.loads(letters[0]["raw"])["k"] == "bad\x00key"
    assert letters[0]["sqlstate"].startswith("22")
    assert "not-a-number" in letters[1]["raw"] and letters[1]["sqlstate"] is None
    status = await asyncio.to_thread(_cli, settings, "sale", "status", str(sale), "--json")
    assert json.loads(status.stdout)["dead_letters"] == 2
    audit = await asyncio.to_thread(_cli, settings, "audit", str(sale))
    assert audit.returncode == 1 and "2 events refused by Postgres" in audit.stdout
    assert "parked in sale_dead_letters" in proc.log.read_text()


# -- Redis connections -----------------------------------------------------------------------
async def test_200_concurrent_reads_on_a_small_pool_get_no_503(database, redis) -> None:
    from aiohttp.test_utils import TestClient

    from gateway.app import create_app
    from tests.conftest import Api, GatewayServer

    client = TestClient(GatewayServer(create_app(make_settings(redis_pool_max=8))))
    await client.start_server()
    try:
        api = Api(client)
        sale = await create_sale(api, quantity=10, per_user_limit=1)
        buyer = await api.signup()
        _, hold = await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                                 headers=buyer["headers"], expect=201,
                                 json={"quantity": 1, "idempotency_key": "k"})
        path = f"/api/v1/reservations/{hold['reservation_id']}"
        answers = await asyncio.gather(*(api.call("GET", path, headers=buyer["headers"])
                                         for _ in range(200)))
        assert [s for s, _ in answers].count(200) == 200, {s for s, _ in answers}
    finally:
        await client.close()


async def test_a_connection_killed_by_a_redis_restart_is_retried_not_a_503() -> None:
    server = PrivateRedis("restart", appendfsync="always").start()
    client = create_redis(make_settings(redis_url=server.url), max_connections=4)
    try:
        await asyncio.gather(*(client.set(f"k{i}", i) for i in range(4)))  # 4 pooled conns
        server.kill()
        server.start()
        values = await asyncio.gather(*(client.get(f"k{i}") for i in range(4)))
        assert values == [b"0", b"1", b"2", b"3"]  # AOF always: nothing acknowledged lost
    finally:
        await client.aclose()
        server.remove()


async def test_a_sale_redis_lost_answers_503_until_recovered(settings, api, redis) -> None:
    sale = await create_sale(api, quantity=5, per_user_limit=1)
    buyer = await api.signup()
    url = f"/api/v1/sales/{sale['sale_id']}/reservations"
    await redis.delete(*sale_keys(sale["sale_id"]).all)  # Redis restarted without its data
    for method, path, body in (("POST", url, {"quantity": 1, "idempotency_key": "k"}),
                               ("GET", f"/api/v1/sales/{sale['sale_id']}", None)):
        resp = await api.client.request(method, path, json=body, headers=buyer["headers"])
        assert resp.status == 503, await resp.text()
        assert_error(await resp.json(), "unavailable")
        assert int(resp.headers["Retry-After"]) >= 1
    status, body = await api.call("POST", "/api/v1/sales/424242/reservations",
                                  json={"quantity": 1, "idempotency_key": "k"},
                                  headers=buyer["headers"])
    assert status == 404, body
    done = await asyncio.to_thread(_cli, settings, "sale", "recover", str(sale["sale_id"]))
    assert done.returncode == 0, done.stderr
    await api.call("POST", url, json={"quantity": 1, "idempotency_key": "k"},
                   headers=buyer["headers"], expect=201)


# -- audit per reservation and the forced repair ---------------------------------------------
async def _forget_last(redis, sale: int, holds) -> None:
    """What an OS crash under everysec does to a sale: its last admissions vanish from
    Redis (consistently: records, holds, buyers, counters, tokens), not from Postgres."""
    keys = sale_keys(sale)
    for h in holds:
        await redis.hdel(keys.res, h.reservation_id)
        await redis.zrem(keys.holds, h.reservation_id)
        await redis.hincrby(keys.buyers, buyer_units_field(h.user_id), -h.quantity)
        await redis.hdel(keys.buyers, buyer_key_field(h.user_id, "k"))
        await redis.hincrby(keys.meta, "held", -h.quantity)
        await redis.hincrby(keys.meta, "tokens", h.quantity)
    await redis.hset(keys.meta, "seq", 0)


async def test_audit_finds_lost_reservations_and_force_recover_repairs_them(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale = await new_sale(sales, product_factory, 30, per_user_limit=1)
    procs.append(ReconcilerProcess(settings, "repair").start())
    holds = await asyncio.gather(*(admission.reserve(sale, i, 1, "k") for i in range(12)))
    await wait_drained(redis, pool, sale, rows=12)
    lost = sorted(holds, key=lambda h: reservation_number(h.reservation_id))[-4:]
    await _forget_last(redis, sale, lost)
    audit = await asyncio.to_thread(_cli, settings, "audit", str(sale), "--json")
    assert audit.returncode == 1
    report = json.loads(audit.stdout)["sales"][0]
    assert report["reservations"]["lost_in_redis"] == 4
    assert set(report["reservations"]["lost_in_redis_ids"]) == {h.reservation_id for h in lost}
    refused = await asyncio.to_thread(_cli, settings, "sale", "recover", str(sale))
    assert refused.returncode == 1 and "--force" in refused.stderr
    fixed = await asyncio.to_thread(_cli, settings, "sale", "recover", str(sale), "--force",
                                    "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["restored_to_redis"] == 4
    assert (await sales.counts(sale))["tokens"] == 18
    fresh = await admission.reserve(sale, 500, 1, "k")
    assert fresh.reservation_id not in {h.reservation_id for h in holds}
    replay = await admission.reserve(sale, lost[0].user_id, 1, "k")  # idempotency restored
    assert replay.replayed and replay.reservation_id == lost[0].reservation_id
    await wait_drained(redis, pool, sale, rows=13)
    clean = await asyncio.to_thread(_cli, settings, "audit", str(sale))
    assert clean.returncode == 0, clean.stdout
    assert "13 in both, 0 differ" in clean.stdout
