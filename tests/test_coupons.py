"""Coupons: rules, limits exact under concurrency, given back when checkout fails."""

from __future__ import annotations

import asyncio
import collections
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.conftest import assert_error, create_sale
from tests.orders_support import add_to_cart, place, product, shopper, stock


async def coupon(api, **fields) -> dict:
    status, body = await api.call("POST", "/api/v1/admin/coupons", headers=api.admin,
                                  json=fields)
    assert status == 201, body
    return body


async def test_a_coupon_limited_to_5_is_taken_by_exactly_5_of_20_concurrent_buyers(
        api, pool) -> None:
    await coupon(api, code="FIRST5", percent_off="20", max_redemptions=5)
    item = await product(api, price="40.00", stock=100)
    buyers = await asyncio.gather(*(shopper(api) for _ in range(20)))
    for buyer in buyers:
        await add_to_cart(api, buyer, item, 2)
    results = await asyncio.gather(*(place(api, b, coupon_code="FIRST5") for b in buyers))
    statuses = collections.Counter(s for s, _ in results)
    assert statuses == {201: 5, 422: 15}, statuses
    for status, body in results:
        if status == 201:
            # 80.00 - 16.00 = 64.00, tax 5.12, free shipping
            assert (body["discount"], body["total"]) == ("16.00", "69.12")
        else:
            assert_error(body, "coupon_invalid")
    # the 15 keep their stock: only the 5 orders took units
    assert await stock(pool, item) == (90, 10)
    assert await pool.fetchval("SELECT redeemed FROM coupons") == 5
    assert await pool.fetchval("SELECT count(*) FROM coupon_redemptions") == 5
    assert await pool.fetchval("SELECT count(*) FROM orders") == 5
    _, listed = await api.call("GET", "/api/v1/admin/coupons/first5", headers=api.admin)
    assert listed["redeemed"] == 5
    # and each of the 15 can still buy without it
    status, _ = await place(api, next(b for b, (s, _) in zip(buyers, results, strict=True)
                                      if s == 422))
    assert status == 201


async def test_per_user_limit_is_exact_under_concurrency(api, pool) -> None:
    await coupon(api, code="ONEEACH", amount_off="3.00", per_user_limit=1)
    buyer = await shopper(api)
    # Six orders at once by one user: six flash-sale holds (one cart is checked out once).
    sale = await create_sale(api, quantity=6, per_user_limit=6, price="10.00")
    holds = [(await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                             headers=buyer["headers"], expect=201,
                             json={"quantity": 1, "idempotency_key": f"k{i}"}))[1]
             for i in range(6)]
    results = await asyncio.gather(*(
        place(api, buyer, coupon_code="ONEEACH", reservation_id=hold["reservation_id"])
        for hold in holds))
    assert sorted(s for s, _ in results) == [201] + [422] * 5, results
    assert await pool.fetchval("SELECT uses FROM coupon_usage") == 1
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_coupon_rules(api) -> None:
    buyer = await shopper(api)
    item = await product(api, price="20.00")
    await add_to_cart(api, buyer, item, 1)
    await coupon(api, code="BIGSPENDER", amount_off="5.00", min_subtotal="50.00")
    await coupon(api, code="SOON", percent_off="5",
                 expires_at=(datetime.now(UTC) + timedelta(seconds=1)).isoformat())
    for code, reason in (("NOPE", "unknown"), ("BIGSPENDER", "min_subtotal")):
        status, err = await place(api, buyer, coupon_code=code)
        assert status == 422
        assert_error(err, "coupon_invalid")
        assert err["error"]["details"] == {"reason": reason}
    await asyncio.sleep(1.1)
    status, err = await place(api, buyer, coupon_code="SOON")
    assert status == 422 and err["error"]["details"] == {"reason": "expired"}
    # an amount larger than the subtotal takes the goods to zero, never below
    await coupon(api, code="HUGE", amount_off="500.00")
    status, order = await place(api, buyer, coupon_code="huge")
    assert status == 201
    assert (order["discount"], order["tax"], order["shipping_fee"], order["total"]) == (
        "20.00", "0.00", "5.00", "5.00")


async def test_a_failed_checkout_gives_the_coupon_back(api, pool) -> None:
    await coupon(api, code="ONLYONE", percent_off="50", max_redemptions=1)
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="10.00"))
    status, err = await place(api, buyer, pm="declined", coupon_code="ONLYONE")
    assert status == 422
    assert_error(err, "payment_declined")
    assert await pool.fetchval("SELECT redeemed FROM coupons") == 0
    assert await pool.fetchval("SELECT status FROM coupon_redemptions") == "released"
    status, order = await place(api, buyer, coupon_code="ONLYONE")
    assert status == 201 and order["discount"] == "5.00"


async def test_create_coupon_contract(api) -> None:
    buyer = await shopper(api)
    body = {"code": "OK10", "percent_off": "10"}
    status, err = await api.call("POST", "/api/v1/admin/coupons", headers=buyer["headers"],
                                 json=body)
    assert status == 403
    created = await coupon(api, **body)
    assert created["code"] == "OK10" and created["percent_off"] == "10.00"
    assert created["redeemed"] == 0 and created["max_redemptions"] is None
    status, err = await api.call("POST", "/api/v1/admin/coupons", headers=api.admin,
                                 json={"code": "ok10", "amount_off": "1.00"})
    assert status == 409
    assert_error(err, "conflict")
    for bad in ({"code": "X1", "percent_off": "10"},
                {"code": "BOTH", "percent_off": "10", "amount_off": "1.00"},
                {"code": "NONE"},
                {"code": "OVER", "percent_off": "100.01"},
                {"code": "ZERO", "amount_off": "0"},
                {"code": "FRAC", "amount_off": "1.005"},
                {"code": "PAST", "percent_off": "5", "expires_at": "2001-01-01T00:00:00Z"},
                {"code": "EXTRA", "percent_off": "5", "redeemed": 0}):
        status, err = await api.call("POST", "/api/v1/admin/coupons", headers=api.admin,
                                     json=bad)
        assert status == 422, bad
        assert_error(err, "validation_failed")
    _, listed = await api.call("GET", "/api/v1/admin/coupons", headers=api.admin)
    assert [c["code"] for c in listed] == ["OK10"]
    assert Decimal(listed[0]["min_subtotal"]) == 0
