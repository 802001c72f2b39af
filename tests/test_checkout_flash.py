"""Checkout of flash-sale holds: the hold becomes an order, expiry and declines give the
unit back, and nobody pays with someone else's hold."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from engine.keys import sale_keys
from tests.conftest import assert_error, create_sale
from tests.orders_support import order_body, place, services_of, shopper, stock, wallet


async def reserve(api, user: dict, sale: dict, key: str = "hold-1") -> dict:
    _, hold = await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                             headers=user["headers"], expect=201,
                             json={"quantity": 1, "idempotency_key": key})
    return hold


async def test_flash_hold_becomes_an_order_paid_by_wallet(api, pool, redis) -> None:
    """9.99 + tax 0.7992 -> 0.80 + shipping 5.00 = 15.79, at the sale's price."""
    sale = await create_sale(api, quantity=5, stock=8)
    buyer = await shopper(api, wallet="20.00")
    hold = await reserve(api, buyer, sale)
    before = await stock(pool, sale["product_id"])
    status, order = await place(api, buyer, pm="wallet", reservation_id=hold["reservation_id"])
    assert status == 201, order
    assert (order["status"], order["subtotal"], order["tax"], order["shipping_fee"],
            order["total"]) == ("paid", "9.99", "0.80", "5.00", "15.79")
    assert order["reservation_id"] == hold["reservation_id"]
    assert [(i["product_id"], i["sale_id"], i["quantity"], i["unit_price"])
            for i in order["items"]] == [(sale["product_id"], sale["sale_id"], 1, "9.99")]
    status, got = await api.call("GET", f"/api/v1/reservations/{hold['reservation_id']}",
                                 headers=buyer["headers"])
    assert status == 200
    assert got["status"] == "confirmed" and got["order_id"] == order["order_id"]
    assert await wallet(pool, buyer) == Decimal("4.21")
    # the saga leaves the flash counters to the reconciler
    assert await stock(pool, sale["product_id"]) == before == (3, 0)
    initial, held, confirmed = await redis.hmget(sale_keys(sale["sale_id"]).meta,
                                                 "initial", "held", "confirmed")
    assert (int(initial), int(held), int(confirmed)) == (5, 0, 1)


async def test_a_hold_that_expires_before_confirm_refuses_and_voids(api, pool) -> None:
    sale = await create_sale(api, quantity=2, hold_seconds=1)
    card_buyer, wallet_buyer = await shopper(api), await shopper(api, wallet="50.00")
    checkout = services_of(api).checkout

    async def slow_authorization(point: str, record) -> None:
        if point == "after_authorize":
            await asyncio.sleep(1.3)  # the hold runs out meanwhile

    checkout.fault = slow_authorization
    try:
        for buyer, pm in ((card_buyer, "card"), (wallet_buyer, "wallet")):
            hold = await reserve(api, buyer, sale)
            body = order_body(buyer, pm=pm, reservation_id=hold["reservation_id"])
            status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                         json=body)
            assert status == 409
            assert_error(err, "reservation_expired")
            status, again = await api.call("POST", "/api/v1/orders",
                                           headers=buyer["headers"], json=body)
            assert (status, again) == (409, err)
            _, got = await api.call("GET", f"/api/v1/reservations/{hold['reservation_id']}",
                                    headers=buyer["headers"])
            assert got["status"] == "expired" and got["order_id"] is None
    finally:
        checkout.fault = None
    assert await pool.fetchval("SELECT status FROM sim_card_charges") == "voided"
    assert [r["status"] for r in await pool.fetch(
        "SELECT status FROM payments ORDER BY payment_id")] == ["voided", "voided"]
    assert await wallet(pool, wallet_buyer) == Decimal("50.00")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_an_expired_hold_is_refused_before_any_payment(api, pool) -> None:
    sale = await create_sale(api, quantity=1, hold_seconds=1)
    buyer = await shopper(api)
    hold = await reserve(api, buyer, sale)
    await asyncio.sleep(1.1)
    status, err = await place(api, buyer, reservation_id=hold["reservation_id"])
    assert status == 409
    assert_error(err, "reservation_expired")
    assert await pool.fetchval("SELECT count(*) FROM payments") == 0


async def test_a_declined_flash_payment_puts_the_unit_back_on_sale(api, pool) -> None:
    sale = await create_sale(api, quantity=3)
    buyer = await shopper(api)
    hold = await reserve(api, buyer, sale)
    _, public = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}")
    assert public["remaining"] == 2
    status, err = await place(api, buyer, pm="declined", reservation_id=hold["reservation_id"])
    assert status == 422
    assert_error(err, "payment_declined")
    _, got = await api.call("GET", f"/api/v1/reservations/{hold['reservation_id']}",
                            headers=buyer["headers"])
    assert got["status"] == "released"
    _, public = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}")
    assert public["remaining"] == 3
    # a released hold cannot be paid for any more
    status, err = await place(api, buyer, reservation_id=hold["reservation_id"])
    assert status == 409
    assert_error(err, "invalid_transition")


async def test_bola_on_reservations(api, pool) -> None:
    sale = await create_sale(api, quantity=2)
    alice, mallory = await shopper(api), await shopper(api, wallet="100.00")
    hold = await reserve(api, alice, sale)
    status, err = await place(api, mallory, pm="wallet", reservation_id=hold["reservation_id"])
    assert status == 404
    assert_error(err, "not_found")
    for method in ("GET", "DELETE"):
        status, err = await api.call(method, f"/api/v1/reservations/{hold['reservation_id']}",
                                     headers=mallory["headers"])
        assert status == 404
        assert_error(err, "not_found")
    status, err = await place(api, mallory, reservation_id="not-a-reservation")
    assert status == 404
    assert await wallet(pool, mallory) == Decimal("100.00")
    _, got = await api.call("GET", f"/api/v1/reservations/{hold['reservation_id']}",
                            headers=alice["headers"])
    assert got["status"] == "held"


async def test_a_hold_is_paid_for_once(api, pool) -> None:
    sale = await create_sale(api, quantity=2)
    buyer = await shopper(api)
    hold = await reserve(api, buyer, sale)
    results = await asyncio.gather(*(place(api, buyer, reservation_id=hold["reservation_id"])
                                     for _ in range(4)))  # four different keys
    statuses = sorted(s for s, _ in results)
    assert statuses.count(201) == 1 and all(s == 409 for s in statuses if s != 201), results
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'paid'") == 1
    charges = [r["status"] for r in await pool.fetch("SELECT status FROM sim_card_charges")]
    assert charges.count("captured") == 1 and set(charges) <= {"captured", "voided"}
