"""Honest metrics: each process exports its own series only, no `_created` series, the
books-mismatch gauge follows a tampered sale, and a closed sale's series go away."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from decimal import Decimal

import aiohttp
import pytest

from engine.admission import Admission
from engine.keys import sale_keys
from tests.conftest import create_sale
from tests.reconciler_proc import ReconcilerProcess, free_port


def _series(text: str) -> dict[str, float]:
    """Every sample of an exposition: 'name{labels}' -> value."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_the_gateway_exports_only_its_own_series(api) -> None:
    sale = await create_sale(api, quantity=3)
    buyer = await api.signup()
    await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                   headers=buyer["headers"], json={"quantity": 1, "idempotency_key": "k"},
                   expect=201)
    await api.call("GET", "/readyz", expect=200)
    text = await (await api.client.get("/metrics")).text()
    names = {re.split(r"[{ ]", line)[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    assert "flashsale_admissions_total" in names and "flashsale_dependency_up" in names
    assert not [n for n in names if n.startswith("flashsale_reconciler_")]
    assert not [n for n in names if n.startswith("flashsale_sale_")]  # the reconciler's
    assert not [n for n in names if n.endswith("_created")]


async def _scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return _series(await resp.text())


async def _until(http, port: int, predicate, what: str, timeout: float = 30.0
                 ) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples = await _scrape(http, port)
            if predicate(samples):
                return samples
        except aiohttp.ClientConnectionError:
            samples = {}
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}; last scrape: "
                                 f"{ {k: v for k, v in samples.items() if 'sale' in k} }")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_the_reconciler_gauges_books_backlogs_and_forgets_closed_sales(
        settings, sales, product_factory, redis, pool) -> None:
    product = await product_factory(stock=20)
    sid = (await sales.create(product_id=product, quantity=10,
                              price=Decimal("3.00")))["sale_id"]
    await pool.execute("INSERT INTO outbox (topic, payload) VALUES ('order.shipped', '{}')")
    port = free_port()
    proc = ReconcilerProcess(settings, "metrics", metrics_port=port).start()
    mismatch = f'flashsale_sale_books_mismatch_units{{sale_id="{sid}"}}'
    try:
        async with aiohttp.ClientSession() as http:
            up = ['flashsale_dependency_up{dependency="postgres"}',
                  'flashsale_dependency_up{dependency="redis"}']
            # a readiness check may time out once on a busy machine: wait for both up; a
            # sweep sets the books gauges, then the backlogs: a scrape may fall between
            samples = await _until(
                http, port, lambda s: s.get(mismatch) == 0 and all(s.get(n) == 1 for n in up)
                and s.get("flashsale_outbox_backlog") == 1,
                "a balanced sale, the outbox backlog and both dependencies up")
            assert samples[f'flashsale_sale_tokens_remaining{{sale_id="{sid}"}}'] == 10
            assert samples["flashsale_outbox_oldest_age_seconds"] >= 0
            assert not [n for n in samples if n.split("{")[0].endswith("_created")]
            assert not [n for n in samples if n.startswith("flashsale_http_")]

            await redis.hincrby(sale_keys(sid).meta, "tokens", 2)  # two units appear from nowhere
            await _until(http, port, lambda s: s.get(mismatch) == 2, "the mismatch")
            await redis.hincrby(sale_keys(sid).meta, "tokens", -2)
            await _until(http, port, lambda s: s.get(mismatch) == 0, "balanced again")

            await sales.change_state(sid, "end")
            await _until(http, port, lambda s: not [n for n in s if f'"{sid}"' in n],
                         "the closed sale's series gone")
    finally:
        proc.stop()


async def test_the_access_log_has_one_line_per_request_and_no_token(database, caplog) -> None:
    from aiohttp.test_utils import TestClient

    from gateway.app import create_app
    from tests.conftest import ADMIN_TOKEN, GatewayServer, make_settings

    client = TestClient(GatewayServer(create_app(make_settings(access_log=True))))
    await client.start_server()
    try:
        with caplog.at_level(logging.INFO, logger="flashsale.access"):
            resp = await client.get("/api/v1/admin/sales/424242?token=leak-me-query",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                             "X-Request-ID": "abc-123"})
            assert resp.status == 404 and resp.headers["X-Request-ID"] == "abc-123"
            resp = await client.get("/healthz", headers={"X-Request-ID": "bad id; forged=1"})
            assert resp.status == 200
    finally:
        await client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "flashsale.access"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("request_id=abc-123 method=GET "
                               "route=/api/v1/admin/sales/{sale_id} status=404 ms=")
    assert "forged" not in lines[1] and "route=/healthz status=200" in lines[1]
    assert not [line for line in lines if ADMIN_TOKEN in line or "leak-me" in line
                or "424242" in line]


@pytest.mark.slow
async def test_the_reconciler_sees_a_dead_postgres_without_anyone_asking(
        settings, sales, product_factory, redis) -> None:
    """flashsale_dependency_up is probed on a timer: it drops while nobody calls /readyz
    and the consumer has nothing to write, and comes back by itself."""
    from urllib.parse import urlsplit

    from tests.conftest import TEST_DATABASE_URL
    from tests.proxy import TcpProxy

    product = await product_factory(stock=5)
    sid = (await sales.create(product_id=product, quantity=5,
                              price=Decimal("1.00")))["sale_id"]
    target = urlsplit(TEST_DATABASE_URL)
    proxy = await TcpProxy(target.hostname, target.port or 5432).start()
    url = TEST_DATABASE_URL.replace(f"{target.hostname}:{target.port}",
                                    f"127.0.0.1:{proxy.port}")
    port = free_port()
    proc = ReconcilerProcess(settings, "probe", database_url=url, metrics_port=port).start()
    up = 'flashsale_dependency_up{dependency="postgres"}'
    try:
        async with aiohttp.ClientSession() as http:
            age = "flashsale_reconciler_oldest_pending_age_seconds"
            await _until(http, port, lambda s: s.get(up) == 1 and s.get(age) == 0,
                         "Postgres up and the sale's stream applied")
            await proxy.cut()
            await _until(http, port, lambda s: s.get(up) == 0, "Postgres down")
            # Lag keeps being measured while Postgres is away (the lag alert depends on it).
            admission = Admission(redis, batching=False)
            await admission.reserve(sid, 1, 1, "during-outage")
            await _until(http, port, lambda s: s.get(age, 0) > 0, "the lag growing")
            await proxy.restore()
            await _until(http, port, lambda s: s.get(up) == 1, "Postgres up again")
            await _until(http, port, lambda s: s.get(age) == 0, "the lag drained")
    finally:
        proc.stop()
        await proxy.close()


async def test_the_gateway_refreshes_dependency_up_without_readyz(database) -> None:
    from aiohttp.test_utils import TestClient

    from gateway.app import create_app
    from tests.conftest import GatewayServer, make_settings

    dead_redis = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                               dependency_timeout=0.3)
    client = TestClient(GatewayServer(create_app(dead_redis)))
    await client.start_server()
    try:
        deadline = time.monotonic() + 20
        while True:  # only /metrics is called: the probe runs on its own timer
            samples = _series(await (await client.get("/metrics")).text())
            if (samples.get('flashsale_dependency_up{dependency="redis"}') == 0
                    and 'flashsale_dependency_up{dependency="postgres"}' in samples):
                break
            assert time.monotonic() < deadline, samples
            await asyncio.sleep(0.1)
        assert samples['flashsale_dependency_up{dependency="postgres"}'] == 1
    finally:
        await client.close()
