"""A checkout interrupted anywhere ends completed or compensated: on the client's retry,
or by recovery after a restart. Faults are injected at the saga's step boundaries, and
one test kills a real process right after the payment was authorized."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from decimal import Decimal

import asyncpg
import pytest

from orders.idempotency import CheckoutRequest
from tests.conftest import assert_error, create_sale
from tests.orders_support import (
    add_to_cart,
    order_body,
    product,
    services_of,
    shopper,
    stock,
    wallet,
)


class Crash(BaseException):
    """The process dies here: nothing after this point runs, no handler, no cleanup."""


def crash_at(point: str):
    async def hook(at: str, record) -> None:
        if at == point:
            raise Crash(at)
    return hook


@pytest.fixture
async def svc(api):
    """The app's services with its background recovery stopped, so each test decides
    when recovery runs."""
    services = services_of(api)
    await services.orders_upkeep.stop()
    yield services
    services.checkout.fault = None


async def interrupted(svc, user: dict, body: dict, point: str) -> None:
    svc.checkout.fault = crash_at(point)
    try:
        with pytest.raises(Crash):
            await svc.checkout.place(user["user_id"], CheckoutRequest(**body))
    finally:
        svc.checkout.fault = None


async def hold_one(api, buyer: dict, sale: dict) -> dict:
    """The buyer's hold of one unit of the sale."""
    _, hold = await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                             headers=buyer["headers"], expect=201,
                             json={"quantity": 1, "idempotency_key": "h"})
    return hold


async def lapse_leases(pool: asyncpg.Pool) -> None:
    """Time passes: the dead executor's lease runs out."""
    await pool.execute("UPDATE checkouts SET lease_until = now() - interval '1 second'"
                       " WHERE state = 'running'")


async def test_killed_after_authorization_recovery_completes_the_flash_order(
        api, svc, pool) -> None:
    sale = await create_sale(api, quantity=3)
    buyer = await shopper(api, wallet="30.00")
    hold = await hold_one(api, buyer, sale)
    body = order_body(buyer, pm="wallet", reservation_id=hold["reservation_id"])
    await interrupted(svc, buyer, body, "after_authorize")
    # the sale's 9.99 + 8% tax 0.80 + shipping 5.00 = 15.79 held of the 30.00
    assert await wallet(pool, buyer) == Decimal("14.21")  # authorized: the money is held
    assert await pool.fetchval("SELECT step FROM checkouts") == "reserved"
    # while the lease runs, the same key is in use
    status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 409
    assert_error(err, "idempotency_key_in_use")

    await lapse_leases(pool)
    report = await svc.checkout.recover_incomplete()
    assert (report.completed, report.failed, report.pending) == (1, 0, 0)
    status, order = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 200 and order["status"] == "paid" and order["total"] == "15.79"
    _, got = await api.call("GET", f"/api/v1/reservations/{hold['reservation_id']}",
                            headers=buyer["headers"])
    assert got["status"] == "confirmed" and got["order_id"] == order["order_id"]
    assert await wallet(pool, buyer) == Decimal("14.21")  # charged once
    assert await pool.fetchval("SELECT executions FROM checkouts") == 2


async def test_the_clients_retry_resumes_a_dead_checkout(api, svc, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="40.00", stock=5)
    await add_to_cart(api, buyer, item, 2)
    body = order_body(buyer)
    await interrupted(svc, buyer, body, "after_authorize")
    assert await stock(pool, item) == (3, 2)
    await lapse_leases(pool)
    status, order = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    # 2 x 40.00 + 8% tax 6.40, shipping free over 50.00
    assert status == 201 and order["status"] == "paid" and order["total"] == "86.40"
    assert await stock(pool, item) == (3, 2)
    assert await pool.fetchval("SELECT count(*) FROM sim_card_charges") == 1
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart["items"] == []


async def test_a_hold_that_expired_while_the_saga_was_dead_is_compensated(
        api, svc, pool) -> None:
    sale = await create_sale(api, quantity=1, hold_seconds=1)
    buyer = await shopper(api, wallet="30.00")
    hold = await hold_one(api, buyer, sale)
    body = order_body(buyer, pm="wallet", reservation_id=hold["reservation_id"])
    await interrupted(svc, buyer, body, "after_authorize")
    await asyncio.sleep(1.1)
    await lapse_leases(pool)
    report = await svc.checkout.recover_incomplete()
    assert (report.completed, report.failed) == (0, 1)
    assert await wallet(pool, buyer) == Decimal("30.00")  # the authorization was voided
    status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 409
    assert_error(err, "reservation_expired")


@pytest.mark.parametrize("point", ["after_reserve", "after_order", "after_capture",
                                   "after_cart"])
async def test_recovery_completes_from_every_step(api, svc, pool, point) -> None:
    buyer = await shopper(api)
    item = await product(api, price="10.00", stock=5)
    await add_to_cart(api, buyer, item, 1)
    body = order_body(buyer)
    await interrupted(svc, buyer, body, point)
    await lapse_leases(pool)
    report = await svc.checkout.recover_incomplete()
    assert report.completed == 1, report
    order = await pool.fetchrow("SELECT status, total FROM orders")
    # 10.00 + 8% tax 0.80 + shipping 5.00
    assert (order["status"], order["total"]) == ("paid", Decimal("15.80"))
    assert await stock(pool, item) == (4, 1)
    assert await pool.fetchval("SELECT status FROM sim_card_charges") == "captured"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart["items"] == []


async def test_a_resumed_checkout_takes_its_units_out_of_the_cart_once(api, svc, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="10.00", stock=9)
    await add_to_cart(api, buyer, item, 2)
    body = order_body(buyer)
    await interrupted(svc, buyer, body, "after_cart")  # paid, cart emptied, not recorded
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart["items"] == []
    await add_to_cart(api, buyer, item, 1)  # the shopper goes on shopping
    await lapse_leases(pool)
    assert (await svc.checkout.recover_incomplete()).completed == 1
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert [(i["product_id"], i["quantity"]) for i in cart["items"]] == [(item, 1)]
    assert await pool.fetchval("SELECT cart_pending FROM checkouts") is False


async def test_a_checkout_dead_before_reserving_is_forgotten(api, svc, pool) -> None:
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="1.00"))
    await pool.execute(  # as a process that died while validating leaves it
        "INSERT INTO checkouts (user_id, idempotency_key, fingerprint, request, kind,"
        " lease_token, lease_until) VALUES ($1, 'k', 'x', $2, 'cart',"
        " gen_random_uuid(), now() - interval '1 second')", buyer["user_id"],
        order_body(buyer, key="k"))
    report = await svc.checkout.recover_incomplete()
    assert report.dropped == 1
    assert await pool.fetchval("SELECT count(*) FROM checkouts") == 0


async def test_an_order_write_failing_after_capture_refunds_and_restocks(api, svc, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="50.00", stock=3)
    await add_to_cart(api, buyer, item, 1)
    await api.call("POST", "/api/v1/admin/coupons", headers=api.admin, expect=201,
                   json={"code": "ONCE", "amount_off": "5.00", "max_redemptions": 1})

    async def failing_write(point: str, record) -> None:
        if point == "after_capture":
            raise asyncpg.CheckViolationError("simulated: the order could not be written")

    svc.checkout.fault = failing_write
    status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                 json=order_body(buyer, coupon_code="ONCE"))
    assert status == 409
    assert_error(err, "conflict")
    assert err["error"]["details"] == {"reason": "order_write_failed"}
    charge = await pool.fetchrow("SELECT amount, status, refunded_amount FROM sim_card_charges")
    assert charge["status"] == "captured" and charge["refunded_amount"] == charge["amount"]
    assert await pool.fetchval("SELECT status FROM payments") == "refunded"
    assert await stock(pool, item) == (3, 0)
    assert await pool.fetchval("SELECT status FROM orders") == "cancelled"
    assert await pool.fetchval("SELECT redeemed FROM coupons") == 0
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert len(cart["items"]) == 1


async def test_a_provider_outage_answers_503_and_the_retry_completes(api, svc, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="10.00", stock=5)
    await add_to_cart(api, buyer, item)
    body = order_body(buyer)
    svc.payments.provider("card").faults.failures["capture"] = 1
    resp = await api.client.post("/api/v1/orders", json=body, headers=buyer["headers"])
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert_error(await resp.json(), "unavailable")
    assert await pool.fetchval("SELECT status FROM orders") == "placed"
    status, order = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 201 and order["status"] == "paid"
    assert await pool.fetchval("SELECT executions FROM checkouts") == 2


async def test_a_provider_that_hangs_times_out_into_503(api, svc, pool) -> None:
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="10.00"))
    card = svc.payments.provider("card")
    svc.payments.timeout, timeout = 0.2, svc.payments.timeout
    card.faults.latency["authorize"] = 1.0
    try:
        status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                     json=order_body(buyer, key="slow"))
    finally:
        svc.payments.timeout = timeout
        card.faults.latency.clear()
    assert status == 503
    assert_error(err, "unavailable")
    report = await svc.checkout.recover_incomplete()  # the lease was let go at once
    assert report.completed == 1
    assert await pool.fetchval("SELECT status FROM orders") == "paid"


_KILLED_CHECKOUT = """
import asyncio, json, sys
from engine.connections import create_pool, create_redis
from gateway.context import build_services
from orders.checkout import Checkout
from orders.idempotency import CheckoutRequest
from orders.pricing import PricingRules
from tests.conftest import make_settings

async def main():
    settings = make_settings()
    pool = await create_pool(settings, min_size=1, max_size=4)
    svc = build_services(settings, create_redis(settings), pool)

    async def wait_to_be_killed(point, record):
        if point == "after_authorize":
            print("AUTHORIZED", flush=True)
            await asyncio.sleep(3600)

    checkout = Checkout(pool=pool, rules=PricingRules.from_settings(settings),
                        admission=svc.admission, sales=svc.sales,
                        carts=svc.carts, payments=svc.payments, lease_seconds=1.0,
                        fault=wait_to_be_killed)
    await checkout.place(int(sys.argv[1]), CheckoutRequest(**json.loads(sys.argv[2])))

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_process_killed_after_authorization_is_completed_after_restart(
        api, svc, pool) -> None:
    sale = await create_sale(api, quantity=2)
    buyer = await shopper(api)
    hold = await hold_one(api, buyer, sale)
    body = order_body(buyer, reservation_id=hold["reservation_id"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_CHECKOUT, str(buyer["user_id"]), json.dumps(body),
        stdout=asyncio.subprocess.PIPE, cwd=os.getcwd())
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"AUTHORIZED"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert await pool.fetchval("SELECT status FROM sim_card_charges") == "authorized"
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    await asyncio.sleep(1.1)  # the dead process's lease runs out
    report = await svc.checkout.recover_incomplete()  # what the restarted gateway runs
    assert report.completed == 1, report
    assert await pool.fetchval("SELECT status FROM orders") == "paid"
    assert await pool.fetchval("SELECT status FROM sim_card_charges") == "captured"
    _, got = await api.call("GET", f"/api/v1/reservations/{hold['reservation_id']}",
                            headers=buyer["headers"])
    assert got["status"] == "confirmed" and got["order_id"] is not None
