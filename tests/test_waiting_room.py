"""The stock-aware waiting room against real Redis and Postgres, through two gateways
sharing one Redis (the room's state is in Redis, so the gateway a buyer hits is chance)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from aiohttp.test_utils import TestClient

from accounts.tokens import TokenSigner
from engine.admission import Admission
from engine.waiting_room import PassSigner
from gateway.app import create_app
from tests.conftest import SECRET, Api, GatewayServer, assert_error, create_sale, make_settings

BUYERS = 200
UNITS = 30


@pytest.fixture
async def gateways(database) -> AsyncIterator[list[Api]]:
    """Two gateway apps on one Redis and one database; joins are not throttled (every
    buyer here comes from one address)."""
    clients = [TestClient(GatewayServer(create_app(make_settings(queue_join_rate=0))))
               for _ in range(2)]
    for client in clients:
        await client.start_server()
    yield [Api(client) for client in clients]
    for client in clients:
        await client.close()


async def buyer_headers(pool, count: int, first: int = 1000) -> list[dict]:
    """Accounts ``first``.. and their bearer tokens (one insert; they never log in)."""
    await pool.execute(
        "INSERT INTO users (user_id, email, name, password_hash)"
        " SELECT g, 'room-' || g || '@example.com', 'Buyer ' || g, 'unused'"
        " FROM generate_series($1::bigint, $2::bigint) g ON CONFLICT DO NOTHING",
        first, first + count - 1)
    await pool.execute(  # later sign-ups must not meet these ids
        "SELECT setval(pg_get_serial_sequence('users', 'user_id'),"
        " (SELECT max(user_id) FROM users))")
    signer = TokenSigner(secret=SECRET, ttl_seconds=3600)
    return [{"Authorization": f"Bearer {signer.issue(first + i, 'customer')}"}
            for i in range(count)]


async def join_all(gateways: list[Api], sale_id: int, buyers: list[dict]) -> list[dict]:
    spread = itertools.cycle(gateways)
    answers = await asyncio.gather(*(
        next(spread).call("POST", f"/api/v1/sales/{sale_id}/queue", headers=h, expect=201)
        for h in buyers))
    return [body for _, body in answers]


async def look_all(gateways: list[Api], sale_id: int, buyers: list[dict]) -> list[dict]:
    spread = itertools.cycle(reversed(gateways))
    answers = await asyncio.gather(*(
        next(spread).call("GET", f"/api/v1/sales/{sale_id}/queue", headers=h, expect=200)
        for h in buyers))
    return [body for _, body in answers]


async def reserve(api: Api, sale_id: int, headers: dict, queue_pass: str | None,
                  key: str = "k1") -> tuple[int, dict]:
    body = {"quantity": 1, "idempotency_key": key}
    if queue_pass is not None:
        body["queue_pass"] = queue_pass
    return await api.call("POST", f"/api/v1/sales/{sale_id}/reservations", headers=headers,
                          json=body)


def arrival(ticket: dict) -> int:
    return int(ticket["ticket"].rsplit("-", 1)[1])


async def test_two_hundred_buyers_for_thirty_units(gateways, redis, pool):
    api = gateways[0]
    sale = await create_sale(api, quantity=UNITS, waiting_room=True, admission_rate=20)
    sale_id = sale["sale_id"]
    assert sale["waiting_room"] == {"admission_rate": 20, "pass_seconds": 120,
                                    "pass_margin_percent": 0, "stock_aware": True}
    buyers = await buyer_headers(pool, BUYERS)
    tickets = await join_all(gateways, sale_id, buyers)
    # One ticket each, numbered in arrival order (Redis's clock), no number given twice.
    assert sorted(arrival(t) for t in tickets) == list(range(1, BUYERS + 1))
    assert {t["status"] for t in tickets} <= {"waiting", "admitted"}
    # Joining again is the same ticket.
    again = await asyncio.gather(*(
        gateways[1].call("POST", f"/api/v1/sales/{sale_id}/queue", headers=h, expect=200)
        for h in buyers[:20]))
    assert [b["ticket"] for _, b in again] == [t["ticket"] for t in tickets[:20]]

    # Nobody reserves without a pass, nor with a pass that is not theirs.
    status, body = await reserve(api, sale_id, buyers[0], None)
    assert status == 403
    assert_error(body, "queue_required")

    bought: dict[int, str] = {}  # arrival -> reservation id
    passes_seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(bought) < UNITS:
        assert time.monotonic() < deadline, f"only {len(bought)} bought"
        looks = await look_all(gateways, sale_id, buyers)
        admitted = sorted(arrival(t) for t in looks if t["status"] == "admitted")
        passes_seen.update(admitted)
        # Passes follow arrival order: whoever holds one came before everyone waiting.
        waiting = [arrival(t) for t in looks if t["status"] == "waiting"]
        if waiting and passes_seen:
            assert max(passes_seen) < min(waiting)
        # Passes never run ahead of the stock (margin 0: unused passes <= units left).
        assert len(passes_seen) <= UNITS
        for t in looks:
            if t["status"] == "waiting":
                assert t["pass"] is None and t["position"] >= 1
        # Someone else's pass is refused; the holder's own is honoured at once.
        holders = [(h, t) for h, t in zip(buyers, looks, strict=True)
                   if t["status"] == "admitted" and arrival(t) not in bought]
        strangers = [h for h, t in zip(buyers, looks, strict=True) if t["status"] == "waiting"]
        if holders and strangers:
            status, body = await reserve(api, sale_id, strangers[0], holders[0][1]["pass"])
            assert status == 403, body
            assert_error(body, "queue_required")
        results = await asyncio.gather(*(
            reserve(gateways[n % 2], sale_id, h, t["pass"])
            for n, (h, t) in enumerate(holders)))
        for (_, t), (status, body) in zip(holders, results, strict=True):
            assert status == 201, (t, body)  # every pass holder who buys at once gets one
            bought[arrival(t)] = body["reservation_id"]
        await asyncio.sleep(0.05)

    assert sorted(bought) == list(range(1, UNITS + 1))
    assert len(passes_seen) <= UNITS * 1.5

    # Tokens are gone but the 30 holds could still come back: nobody is told sold out yet.
    rest = [h for h, t in zip(buyers, tickets, strict=True) if arrival(t) not in bought]
    looks = await look_all(gateways, sale_id, rest)
    assert {t["status"] for t in looks} == {"waiting"}

    # The 30 pay: nothing can come back, and every remaining ticket learns it at once.
    admission = Admission(redis, batching=False)
    for n, rid in enumerate(bought.values()):
        await admission.confirm(rid, user_id=await _owner(admission, rid),
                                order_id=n + 1)
    started = time.monotonic()
    while True:
        looks = await look_all(gateways, sale_id, rest)
        if {t["status"] for t in looks} == {"sold_out"}:
            break
        assert time.monotonic() - started < 2, {t["status"] for t in looks}
        await asyncio.sleep(0.1)
    assert all(t["pass"] is None and t["estimated_wait_seconds"] is None for t in looks)
    # A latecomer is told at once too, and a sold-out room queues nobody.
    _, late = await api.call("POST", f"/api/v1/sales/{sale_id}/queue",
                             headers=(await buyer_headers(pool, 1, first=9000))[0], expect=201)
    assert late["status"] == "sold_out"
    metrics = (await (await api.client.get("/metrics")).text())
    assert f'flashsale_room_told_sold_out{{sale_id="{sale_id}"}} {BUYERS - UNITS + 1}.0' \
        in metrics
    # The operator's board shows the room as it stands.
    _, board = await api.call("GET", f"/api/v1/admin/sales/{sale_id}", headers=api.admin,
                              expect=200)
    room = board["waiting_room"]
    assert room["sold_out"] is True and room["told_sold_out"] == BUYERS - UNITS + 1
    assert room["admitted"] == len(passes_seen) == UNITS
    assert room["waiting"] == BUYERS - UNITS and room["admission_rate"] == 20


async def _owner(admission: Admission, reservation_id: str) -> int:
    hold = await admission.get(reservation_id)
    assert hold is not None and hold.user_id is not None
    return hold.user_id


async def test_a_paused_sale_holds_the_line_and_an_ended_one_tells_it(gateways, pool):
    api = gateways[0]
    sale = await create_sale(api, quantity=5, waiting_room=True)
    sale_id = sale["sale_id"]
    plain = await create_sale(api, quantity=5)
    _, board = await api.call("GET", f"/api/v1/admin/sales/{plain['sale_id']}",
                              headers=api.admin, expect=200)
    assert board["waiting_room"] is None
    await api.call("POST", f"/api/v1/admin/sales/{sale_id}/pause", headers=api.admin,
                   expect=200)
    buyers = await buyer_headers(pool, 3)
    tickets = await join_all(gateways, sale_id, buyers)
    assert {t["status"] for t in tickets} == {"waiting"}  # paused: nobody admitted
    await api.call("POST", f"/api/v1/admin/sales/{sale_id}/resume", headers=api.admin,
                   expect=200)
    looks = await look_all(gateways, sale_id, buyers)
    assert {t["status"] for t in looks} == {"admitted"}
    later = await buyer_headers(pool, 2, first=7000)
    await join_all(gateways, sale_id, later[:1])
    await api.call("POST", f"/api/v1/admin/sales/{sale_id}/end", headers=api.admin,
                   expect=200)
    looks = await look_all(gateways, sale_id, buyers + later[:1])
    assert {t["status"] for t in looks} == {"sold_out"}  # nothing left to wait for
    _, late = await api.call("POST", f"/api/v1/sales/{sale_id}/queue", headers=later[1],
                             expect=201)
    assert late["status"] == "sold_out"


async def test_expired_holds_reopen_the_room(gateways, redis, pool):
    api = gateways[0]
    sale = await create_sale(api, quantity=5, hold_seconds=1, waiting_room=True,
                             admission_rate=1000)
    sale_id = sale["sale_id"]
    buyers = await buyer_headers(pool, 12)
    tickets = await join_all(gateways, sale_id, buyers)
    buyers = [h for _, h in sorted(zip(map(arrival, tickets), buyers, strict=True))]
    looks = await look_all(gateways, sale_id, buyers)
    first = [(h, t) for h, t in zip(buyers, looks, strict=True) if t["status"] == "admitted"]
    assert sorted(arrival(t) for _, t in first) == [1, 2, 3, 4, 5]
    for h, t in first:
        status, _ = await reserve(api, sale_id, h, t["pass"])
        assert status == 201
    # Sold, not paid: the rest keep waiting, and no further pass goes out.
    looks = await look_all(gateways, sale_id, buyers)
    assert [t["status"] for t in looks[5:]] == ["waiting"] * 7
    await asyncio.sleep(1.1)
    expired, units, _ = await Admission(redis, batching=False).expire_due(sale_id)
    assert (expired, units) == (5, 5)
    looks = await look_all(gateways, sale_id, buyers)
    assert sorted(arrival(t) for t in looks if t["status"] == "admitted") == list(range(1, 11))
    assert [t["status"] for t in looks[10:]] == ["waiting"] * 2
    assert [t["position"] for t in looks[10:]] == [1, 2]


async def test_a_pass_is_bound_to_its_user_sale_and_lifetime(gateways, pool):
    api = gateways[0]
    sale = await create_sale(api, quantity=3, waiting_room=True)
    other = await create_sale(api, quantity=3, waiting_room=True)
    plain = await create_sale(api, quantity=3)
    alice, bob = await buyer_headers(pool, 2)
    for sale_id in (sale["sale_id"], other["sale_id"]):
        await join_all(gateways, sale_id, [alice])
    _, ticket = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}/queue", headers=alice,
                               expect=200)
    assert ticket["status"] == "admitted" and ticket["pass_expires_at"]
    signer = PassSigner(SECRET)
    forged = ticket["pass"][:-2] + ("AA" if not ticket["pass"].endswith("AA") else "BB")
    expired = signer.sign(sale["sale_id"], 1000, int(time.time() * 1000) - 1)
    for who, queue_pass, reason in [
            (bob, ticket["pass"], "invalid"),         # another user's pass
            (alice, forged, "invalid"),               # not signed by us
            (alice, expired, "expired"),              # ran out
            (alice, "", "missing"), (alice, "1.2.3", "invalid"),
            (alice, ticket["pass"][:-1] + "é", "invalid"),   # any text at all
            (alice, "1.1000.99999999999999999999.x", "invalid")]:
        status, body = await reserve(api, sale["sale_id"], who, queue_pass)
        assert status == 403, body
        assert_error(body, "queue_required")
        assert body["error"]["details"] == {"reason": reason}
    # Another sale's pass does not open this one.
    status, body = await reserve(api, other["sale_id"], alice, ticket["pass"])
    assert status == 403 and body["error"]["details"] == {"reason": "invalid"}
    # The right pass serves its holder's attempts while it lives, replays included.
    for _ in range(2):
        status, body = await reserve(api, sale["sale_id"], alice, ticket["pass"])
        assert status in (200, 201) and body["status"] == "held"
    # A sale without a room needs no pass, and has no queue.
    status, _ = await reserve(api, plain["sale_id"], alice, None)
    assert status == 201
    status, body = await api.call("POST", f"/api/v1/sales/{plain['sale_id']}/queue",
                                  headers=alice)
    assert status == 404
    assert_error(body, "not_found")


async def test_joins_are_throttled_per_address(database, pool):
    client = TestClient(GatewayServer(create_app(make_settings(queue_join_rate=1))))
    await client.start_server()
    try:
        api = Api(client)
        sale = await create_sale(api, quantity=3, waiting_room=True)
        path = f"/api/v1/sales/{sale['sale_id']}/queue"
        statuses = []
        for headers in await buyer_headers(pool, 4):  # burst of two, then one a second
            status, body = await api.call("POST", path, headers=headers)
            statuses.append(status)
        assert statuses[:2] == [201, 201] and 429 in statuses[2:]
        assert_error(body, "rate_limited")
    finally:
        await client.close()


async def test_the_estimate_comes_from_the_measured_rate(gateways, pool):
    api = gateways[0]
    sale = await create_sale(api, quantity=100, waiting_room=True, admission_rate=4)
    buyers = await buyer_headers(pool, 30)
    tickets = await join_all(gateways, sale["sale_id"], buyers)
    # Nothing measured yet: no estimate rather than a guess.
    assert all(t["estimated_wait_seconds"] is None for t in tickets if t["status"] == "waiting")
    latest = max(zip(tickets, buyers, strict=True), key=lambda tb: arrival(tb[0]))[1]
    while True:  # keep looking (looking moves the room) until a window is measured
        _, last = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}/queue",
                                 headers=latest, expect=200)
        if last["estimated_wait_seconds"] is not None:
            break
        await asyncio.sleep(0.25)
    assert last["status"] == "waiting"
    # The rate measured is about the configured 4 passes per second (a saved-up second
    # may fall in the first window; a loaded machine may look late): between 1 and 8.
    assert last["position"] // 8 <= last["estimated_wait_seconds"] <= last["position"]


async def test_the_stream_tells_a_waiting_buyer_it_is_sold_out(gateways, redis, pool):
    api = gateways[0]
    sale = await create_sale(api, quantity=1, waiting_room=True)
    sale_id = sale["sale_id"]
    first, second = await buyer_headers(pool, 2)
    await join_all(gateways, sale_id, [first])  # in this order: the first gets the unit
    await join_all(gateways, sale_id, [second])
    _, ticket = await api.call("GET", f"/api/v1/sales/{sale_id}/queue", headers=first,
                               expect=200)
    status, hold = await reserve(api, sale_id, first, ticket["pass"])
    assert status == 201, hold
    resp = await gateways[1].client.get(f"/api/v1/sales/{sale_id}/queue/events",
                                        headers=second)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    first_event = await resp.content.readuntil(b"\n\n")
    assert b'"status":"waiting"' in first_event and b'"position":1' in first_event
    admission = Admission(redis, batching=False)
    await admission.confirm(hold["reservation_id"],
                            user_id=await _owner(admission, hold["reservation_id"]), order_id=1)
    rest = await asyncio.wait_for(resp.content.read(), timeout=10)
    assert rest.startswith(b"event: ticket\ndata: ") and b'"status":"sold_out"' in rest
    # Without a ticket there is no stream, and the error has the contract's shape.
    status, body = await api.call("GET", f"/api/v1/sales/{sale_id}/queue/events",
                                  headers=(await buyer_headers(pool, 1, first=5000))[0])
    assert status == 404
    assert_error(body, "not_found")


async def test_cli_creates_a_sale_with_a_waiting_room(settings, product_factory, gateways,
                                                      pool):
    product = await product_factory(stock=10)
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url}

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "sale", "create", "--product-id", str(product),
            "--quantity", "4", "--price", "5.00", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, _, err = await cli("--pass-seconds", "30")
    assert code == 1 and "need --waiting-room" in err and len(err.strip().splitlines()) == 1
    code, out, err = await cli("--waiting-room", "--admission-rate", "7", "--json")
    assert code == 0, err
    row = json.loads(out)
    room = row["waiting_room"]
    assert (room["admission_rate"], room["pass_seconds"], room["pass_margin_percent"],
            room["stock_aware"], room["waiting"]) == (7, 120, 0, True, 0)
    alice = (await buyer_headers(pool, 1))[0]
    status, body = await reserve(gateways[0], row["sale_id"], alice, None)
    assert status == 403 and body["error"]["code"] == "queue_required"
    _, ticket = await gateways[0].call("POST", f"/api/v1/sales/{row['sale_id']}/queue",
                                       headers=alice, expect=201)
    assert ticket["status"] == "admitted"
    status, _ = await reserve(gateways[0], row["sale_id"], alice, ticket["pass"])
    assert status == 201
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "sale", "status", str(row["sale_id"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "waiting room: 0 waiting  1 passes live  1 admitted  0 told sold out" in out.decode()


async def test_a_recovered_sale_keeps_its_room(sales, product_factory, redis, gateways,
                                              pool):
    """Redis lost everything: `sale recover` configures the room before the tokens, so the
    sale never sells past it; the line itself is gone and buyers join again."""
    from engine.keys import room_keys, sale_keys
    from engine.waiting_room import RoomConfig
    from reconciler.recovery import recover_sale

    product = await product_factory(stock=10)
    sale = await sales.create(product_id=product, quantity=4, price=Decimal("3.00"),
                              waiting_room=RoomConfig(admission_rate=9, pass_seconds=30))
    sale_id = sale["sale_id"]
    alice = (await buyer_headers(pool, 1))[0]
    await join_all(gateways, sale_id, [alice])
    await redis.delete(*sale_keys(sale_id).all, *room_keys(sale_id).for_scripts)
    await recover_sale(sales, sale_id)
    fresh = TestClient(GatewayServer(create_app(make_settings(queue_join_rate=0))))
    await fresh.start_server()  # a gateway that never saw the sale before
    try:
        api = Api(fresh)
        status, body = await reserve(api, sale_id, alice, None)
        assert status == 403 and body["error"]["code"] == "queue_required"
        _, ticket = await api.call("POST", f"/api/v1/sales/{sale_id}/queue", headers=alice,
                                   expect=201)
        assert ticket["ticket"] == f"{sale_id}-1" and ticket["status"] == "admitted"
        _, board = await api.call("GET", f"/api/v1/admin/sales/{sale_id}", headers=api.admin,
                                  expect=200)
        assert (board["waiting_room"]["admission_rate"],
                board["waiting_room"]["pass_seconds"]) == (9, 30)
    finally:
        await fresh.close()


@pytest.mark.slow
async def test_two_worker_processes_share_one_room(settings, sales, product_factory,
                                                  pool) -> None:
    """`flashsale serve --workers 2`: buyers spread over both processes (a new connection
    each) still get one line in arrival order, and passes within the stock."""
    import aiohttp

    from engine.waiting_room import RoomConfig
    from tests.reconciler_proc import ROOT as ROOT_DIR
    from tests.reconciler_proc import free_port, wait_answering

    product = await product_factory(stock=20)
    sale = await sales.create(product_id=product, quantity=20, price=Decimal("5.00"),
                              waiting_room=RoomConfig(admission_rate=1000))
    port = free_port()
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": settings.secret,
           "FLASHSALE_QUEUE_JOIN_RATE": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", "2"], cwd=ROOT_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/v1/sales/{sale['sale_id']}/queue"
    buyers = await buyer_headers(pool, 150)
    try:
        await wait_answering(f"http://127.0.0.1:{port}", proc, "/readyz")
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=50)) as http:

            async def call(method: str, headers: dict) -> dict:
                async with http.request(method, url, headers=headers) as resp:
                    assert resp.status in (200, 201), await resp.text()
                    return await resp.json()

            tickets = await asyncio.gather(*(call("POST", h) for h in buyers))
            assert sorted(arrival(t) for t in tickets) == list(range(1, 151))
            looks = await asyncio.gather(*(call("GET", h) for h in buyers))
        admitted = sorted(arrival(t) for t in looks if t["status"] == "admitted")
        assert admitted == list(range(1, 21))  # the first 20 to arrive, and no more
        assert all(t["position"] == arrival(t) - 20 for t in looks if t["status"] == "waiting")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
