"""Notifications: written with each order change (transactional outbox), delivered at
least once by the dispatcher to a log file or a webhook with retries, marked delivered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys

from aiohttp import web
from aiohttp.test_utils import TestServer

from orders.outbox import Dispatcher, LogFileSink, Notification, WebhookSink
from tests.conftest import TEST_DATABASE_URL
from tests.orders_support import add_to_cart, admin_move, place, product, shopper


async def two_orders_shipped(api) -> list[int]:
    """Two paid orders, the first also shipped: confirmed, confirmed, shipped."""
    ids = []
    for _ in range(2):
        buyer = await shopper(api)
        await add_to_cart(api, buyer, await product(api, price="7.00"))
        _, order = await place(api, buyer)
        ids.append(order["order_id"])
    await admin_move(api, ids[0], "shipped")
    return ids


async def test_log_file_sink_gets_every_change_once_and_in_order(api, pool, tmp_path) -> None:
    first, second = await two_orders_shipped(api)
    path = tmp_path / "notes" / "orders.log"
    dispatcher = Dispatcher(pool=pool, sink=LogFileSink(path))
    report = await dispatcher.run_once()
    assert (report.delivered, report.failed) == (3, 0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(n["topic"], n["order_id"]) for n in lines] == [
        ("order.confirmed", first), ("order.confirmed", second), ("order.shipped", first)]
    assert lines[0]["data"]["status"] == "paid" and lines[0]["data"]["total"] == "12.56"
    assert lines[2]["data"]["status"] == "shipped"
    assert await dispatcher.pending() == 0
    assert (await dispatcher.run_once()).delivered == 0  # marked: never again


async def test_webhook_retries_then_delivers_signed(api, pool) -> None:
    await two_orders_shipped(api)
    seen: list[tuple[dict, dict]] = []
    failures = {"left": 2}

    async def receive(request: web.Request) -> web.Response:
        if failures["left"]:
            failures["left"] -= 1
            return web.Response(status=503)
        seen.append((dict(request.headers), await request.json()))
        assert request.headers["X-Flashsale-Signature"] == "sha256=" + hmac.new(
            b"s3cret", await request.read(), hashlib.sha256).hexdigest()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    async with TestServer(app) as server:
        sink = WebhookSink(str(server.make_url("/hook")), retries=3, backoff=0.01,
                           signing_secret="s3cret")
        report = await Dispatcher(pool=pool, sink=sink).run_once()
        await sink.close()
    assert (report.delivered, report.failed) == (3, 0)
    assert [body["topic"] for _, body in seen] == ["order.confirmed", "order.confirmed",
                                                   "order.shipped"]
    assert [h["X-Flashsale-Event-Id"] for h, _ in seen] == [str(b["event_id"]) for _, b in seen]


async def test_a_failing_webhook_keeps_the_event_and_holds_back_that_orders_later_ones(
        api, pool, tmp_path) -> None:
    first, second = await two_orders_shipped(api)
    delivered: list[Notification] = []

    class Flaky:
        async def deliver(self, note: Notification) -> None:
            if note.order_id == first and note.topic == "order.confirmed":
                raise ConnectionError("receiver down")
            delivered.append(note)

        async def close(self) -> None:
            return None

    dispatcher = Dispatcher(pool=pool, sink=Flaky())
    report = await dispatcher.run_once()
    assert (report.delivered, report.failed) == (1, 1)
    assert [(n.topic, n.order_id) for n in delivered] == [("order.confirmed", second)]
    rows = await pool.fetch("SELECT topic, order_id, attempts, last_error,"
                            " next_attempt_at > now() AS later FROM outbox"
                            " WHERE delivered_at IS NULL ORDER BY event_id")
    assert [(r["topic"], r["order_id"], r["later"]) for r in rows] == [
        ("order.confirmed", first, True), ("order.shipped", first, True)]
    assert "receiver down" in rows[0]["last_error"]
    # the receiver is back and the backoff is over: both go, in order
    await pool.execute("UPDATE outbox SET next_attempt_at = now()")
    dispatcher.sink = LogFileSink(tmp_path / "out.log")
    assert (await dispatcher.run_once()).delivered == 2
    assert await dispatcher.pending() == 0


async def test_a_crash_between_delivery_and_mark_delivers_again(api, pool, tmp_path) -> None:
    """At least once: the dispatcher died after the sink took the event; once its claim
    lapses, the event is delivered again (receivers deduplicate by event_id)."""
    await two_orders_shipped(api)
    received: list[int] = []

    class DiesAfterDelivering:
        async def deliver(self, note: Notification) -> None:
            received.append(note.event_id)
            raise KeyboardInterrupt  # the process dies here

        async def close(self) -> None:
            return None

    try:
        await Dispatcher(pool=pool, sink=DiesAfterDelivering(), batch=1).run_once()
    except KeyboardInterrupt:
        pass
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == 3
    await pool.execute("UPDATE outbox SET locked_until = now() - interval '1 second'")
    sink = LogFileSink(tmp_path / "out.log")
    again = Dispatcher(pool=pool, sink=sink, batch=10)
    assert (await again.run_once()).delivered == 3
    assert received == [await pool.fetchval("SELECT min(event_id) FROM outbox")]


async def test_flashsale_notify_once(api, pool, tmp_path) -> None:
    await two_orders_shipped(api)
    path = tmp_path / "out.log"
    env = {**os.environ, "FLASHSALE_DATABASE_URL": TEST_DATABASE_URL}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "notify", "--once", "--log-file", str(path), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"delivered": 3, "failed": 0, "pending": 0}
    assert len(path.read_text().splitlines()) == 3
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "notify", "--once", stderr=asyncio.subprocess.PIPE,
        env=env)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"exactly one sink" in err
