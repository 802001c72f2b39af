"""Checkout over HTTP: cart to paid order with exact arithmetic, idempotency, declines,
stock, and the contract's errors."""

from __future__ import annotations

import asyncio
import collections
from decimal import Decimal

from tests.conftest import assert_error, create_sale
from tests.orders_support import (
    add_to_cart,
    order_body,
    place,
    product,
    shopper,
    stock,
    wallet,
)


async def test_cart_to_paid_order_with_exact_arithmetic(api, pool) -> None:
    """subtotal 3 x 19.99 + 2 x 5.24 = 70.45; 10% off = 7.045 -> 7.05 (half up);
    tax 8% of 63.40 = 5.072 -> 5.07; 63.40 is over 50.00 so shipping is free;
    total 63.40 + 5.07 = 68.47."""
    buyer = await shopper(api)
    gadget = await product(api, price="19.99", stock=10, name="Gadget")
    cable = await product(api, price="5.24", stock=10, name="Cable")
    await add_to_cart(api, buyer, gadget, 3)
    cart = await add_to_cart(api, buyer, cable, 2)
    assert cart["subtotal"] == "70.45"
    await api.call("POST", "/api/v1/admin/coupons", headers=api.admin, expect=201,
                   json={"code": "TENOFF", "percent_off": "10"})

    status, order = await place(api, buyer, coupon_code="tenoff")
    assert status == 201, order
    assert {k: order[k] for k in ("status", "subtotal", "discount", "tax", "shipping_fee",
                                  "total", "coupon_code")} == {
        "status": "paid", "subtotal": "70.45", "discount": "7.05", "tax": "5.07",
        "shipping_fee": "0.00", "total": "68.47", "coupon_code": "TENOFF"}
    assert [(i["product_id"], i["quantity"], i["unit_price"], i["subtotal"])
            for i in order["items"]] == [(gadget, 3, "19.99", "59.97"), (cable, 2, "5.24", "10.48")]
    assert [e["status"] for e in order["events"]] == ["placed", "paid"]
    assert order["payment"] == {"method": "card", "status": "captured", "amount": "68.47",
                                "refunded_amount": "0.00"}
    assert await stock(pool, gadget) == (7, 3) and await stock(pool, cable) == (8, 2)
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart == {"items": [], "subtotal": "0.00"}
    status, fetched = await api.call("GET", f"/api/v1/orders/{order['order_id']}",
                                     headers=buyer["headers"])
    assert status == 200 and fetched == order
    charge = await pool.fetchrow("SELECT amount, status FROM sim_card_charges")
    assert (charge["amount"], charge["status"]) == (Decimal("68.47"), "captured")
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY event_id")]
    assert topics == ["order.confirmed"]


async def test_small_order_pays_tax_and_shipping(api) -> None:
    """12.34 -> tax 0.9872 -> 0.99, under the free-shipping threshold: 5.00; total 18.33."""
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="12.34"))
    status, order = await place(api, buyer)
    assert status == 201
    assert (order["subtotal"], order["discount"], order["tax"], order["shipping_fee"],
            order["total"]) == ("12.34", "0.00", "0.99", "5.00", "18.33")


async def test_replay_reuse_and_in_use(api, pool) -> None:
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="10.00"), 2)
    body = order_body(buyer)
    resp = await api.client.post("/api/v1/orders", json=body, headers=buyer["headers"])
    first = await resp.read()
    assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    # the same key and body: the stored response, byte for byte, with 200
    resp = await api.client.post("/api/v1/orders", json=dict(reversed(body.items())),
                                 headers=buyer["headers"])
    assert resp.status == 200 and await resp.read() == first
    assert resp.headers["Idempotent-Replayed"] == "true"
    # the same key, another body
    status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                 json={**body, "payment_method_id": buyer["pm"]["wallet"]})
    assert status == 422
    assert_error(err, "idempotency_key_reused")
    # the key belongs to its user: another user may use the same string
    other = await shopper(api)
    await add_to_cart(api, other, await product(api, price="1.00"))
    status, _ = await place(api, other, key=body["idempotency_key"])
    assert status == 201
    assert await pool.fetchval("SELECT count(*) FROM orders") == 2


async def test_ten_concurrent_posts_of_one_key_give_one_order(api, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="25.00", stock=50)
    await add_to_cart(api, buyer, item, 2)
    body = order_body(buyer)

    async def post() -> tuple[int, dict]:
        return await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)

    results = await asyncio.gather(*(post() for _ in range(10)))
    statuses = collections.Counter(s for s, _ in results)
    assert statuses[201] == 1 and statuses[201] + statuses[200] + statuses[409] == 10, statuses
    created = next(b for s, b in results if s == 201)
    for status, answer in results:
        if status == 200:
            assert answer == created
        elif status == 409:
            assert_error(answer, "idempotency_key_in_use")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await stock(pool, item) == (48, 2)
    # once finished, every retry gets the stored order
    status, again = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 200 and again == created


async def test_validation_failures_are_not_stored(api) -> None:
    buyer = await shopper(api)
    body = order_body(buyer)
    status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 422
    assert_error(err, "cart_empty")
    await add_to_cart(api, buyer, await product(api, price="3.00"))
    status, order = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 201 and order["status"] == "paid"


async def test_declined_card_releases_the_stock_and_keeps_the_cart(api, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="30.00", stock=5)
    await add_to_cart(api, buyer, item, 2)
    for pm, reason in (("declined", "card_declined"), ("no_funds", "insufficient_funds")):
        body = order_body(buyer, pm=pm)
        status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                     json=body)
        assert status == 422
        assert_error(err, "payment_declined")
        assert err["error"]["details"] == {"reason": reason}
        assert await stock(pool, item) == (5, 0)
        # the failure is the stored answer of that key
        status, again = await api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                       json=body)
        assert status == 422 and again == err
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert [(i["product_id"], i["quantity"]) for i in cart["items"]] == [(item, 2)]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    assert {r["status"] for r in await pool.fetch("SELECT status FROM payments")} == {"declined"}
    status, order = await place(api, buyer)
    assert status == 201 and await stock(pool, item) == (3, 2)


async def test_changed_price_is_reported_not_charged(api, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="20.00")
    await add_to_cart(api, buyer, item)
    await api.call("PATCH", f"/api/v1/seller/products/{item}", headers=api.admin,
                   json={"price": "24.00"}, expect=200)
    body = order_body(buyer)
    status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 409
    assert_error(err, "conflict")
    assert err["error"]["details"]["price_changes"] == [
        {"product_id": item, "cart_price": "20.00", "current_price": "24.00"}]
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart["items"][0]["unit_price"] == "24.00"  # the shopper now sees the new price
    assert await pool.fetchval("SELECT count(*) FROM payments") == 0
    status, order = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=body)
    assert status == 201 and order["subtotal"] == "24.00"


async def test_missing_stock_is_reported(api, pool) -> None:
    buyer = await shopper(api)
    item = await product(api, price="5.00", stock=3)
    await add_to_cart(api, buyer, item, 3)
    await api.call("PUT", f"/api/v1/seller/products/{item}/inventory", headers=api.admin,
                   json={"available_qty": 1}, expect=200)
    status, err = await place(api, buyer)
    assert status == 422
    assert_error(err, "insufficient_stock")
    assert err["error"]["details"]["items"] == [
        {"product_id": item, "requested": 3, "available_qty": 1}]
    assert await stock(pool, item) == (1, 0)


async def test_cash_on_delivery_is_placed_not_paid(api, pool) -> None:
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="60.00"))
    status, order = await place(api, buyer, pm="cod")
    assert status == 201
    assert order["status"] == "placed" and order["total"] == "64.80"
    assert order["payment"]["status"] == "pending"
    assert [e["status"] for e in order["events"]] == ["placed"]


async def test_wallet_pays_and_two_concurrent_orders_cannot_overspend(api, pool) -> None:
    """55.00 + 4.40 tax, free shipping: 59.40 each; a balance of 100.00 pays one of a cart
    order and a flash-sale order placed at the same moment."""
    buyer = await shopper(api, wallet="100.00")
    item = await product(api, price="55.00", stock=10)
    await add_to_cart(api, buyer, item)
    sale = await create_sale(api, quantity=3, price="55.00")
    _, hold = await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                             headers=buyer["headers"], expect=201,
                             json={"quantity": 1, "idempotency_key": "flash-1"})
    results = await asyncio.gather(
        place(api, buyer, pm="wallet"),
        place(api, buyer, pm="wallet", reservation_id=hold["reservation_id"]))
    statuses = sorted(s for s, _ in results)
    assert statuses == [201, 422], results
    paid = next(b for s, b in results if s == 201)
    refused = next(b for s, b in results if s == 422)
    assert paid["total"] == "59.40" and paid["payment"]["method"] == "wallet"
    assert_error(refused, "payment_declined")
    assert refused["error"]["details"] == {"reason": "insufficient_funds"}
    assert await wallet(pool, buyer) == Decimal("40.60")
    assert await stock(pool, item) in ((9, 1), (10, 0))  # the cart's or the hold's order
    ledger = await pool.fetch("SELECT reference, amount, balance_after FROM wallet_ledger"
                              " ORDER BY entry_id")
    # The credit, then the one payment (the refused one left no entry)
    assert [(r["amount"], r["balance_after"]) for r in ledger if r["amount"]] == [
        (Decimal("100.00"), Decimal("100.00")), (Decimal("-59.40"), Decimal("40.60"))]
    assert ledger[0]["reference"].startswith(f"credit:{buyer['user_id']}:")


async def test_bola_address_and_payment_method_of_another_user(api, pool) -> None:
    alice, mallory = await shopper(api), await shopper(api)
    await add_to_cart(api, mallory, await product(api, price="9.00"))
    for field in ("shipping_address_id", "payment_method_id"):
        body = order_body(mallory)
        body[field] = alice["address_id"] if field == "shipping_address_id" else alice["pm"]["card"]
        status, err = await api.call("POST", "/api/v1/orders", headers=mallory["headers"],
                                     json=body)
        assert status == 404
        assert_error(err, "not_found")
    assert await pool.fetchval("SELECT count(*) FROM checkouts") == 0


async def test_request_contract(api) -> None:
    buyer = await shopper(api)
    body = order_body(buyer)
    for bad, path in (({**body, "total": "0.01"}, "$"), ({**body, "user_id": 1}, "$"),
                      ({**body, "idempotency_key": ""}, "$.idempotency_key"),
                      ({k: v for k, v in body.items() if k != "idempotency_key"}, "$"),
                      ({**body, "payment_method_id": 0}, "$.payment_method_id")):
        status, err = await api.call("POST", "/api/v1/orders", headers=buyer["headers"], json=bad)
        assert status == 422, bad
        assert_error(err, "validation_failed")
        assert err["error"]["details"][0]["path"] == path
    status, err = await api.call("POST", "/api/v1/orders", json=body)
    assert status == 401
    assert_error(err, "unauthorized")
    status, err = await api.call("POST", "/api/v1/orders", headers=api.admin, json=body)
    assert status == 403
    assert_error(err, "forbidden")


async def test_checkout_metrics(api) -> None:
    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="2.00"))
    await place(api, buyer)
    text = await (await api.client.get("/metrics")).text()
    assert 'flashsale_orders_total{status="paid"}' in text
    assert "flashsale_checkout_duration_seconds_count" in text
