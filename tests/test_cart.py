"""The cart over HTTP: lines, quantities, price snapshots, TTL, owners only, and no lost
update under concurrent adds."""

from __future__ import annotations

import asyncio

from engine.keys import cart_key
from orders.cart import CART_TTL_SECONDS
from tests.conftest import assert_error
from tests.orders_support import add_to_cart, product, shopper


async def test_add_view_update_remove(api, redis) -> None:
    buyer = await shopper(api)
    pen = await product(api, price="1.25", name="Pen")
    ink = await product(api, price="7.10", name="Ink")
    status, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert status == 200 and cart == {"items": [], "subtotal": "0.00"}
    cart = await add_to_cart(api, buyer, pen, 3)
    cart = await add_to_cart(api, buyer, ink, 1)
    cart = await add_to_cart(api, buyer, pen, 2)  # same product: same line
    assert cart == {"items": [
        {"item_id": pen, "product_id": pen, "name": "Pen", "quantity": 5, "unit_price": "1.25",
         "subtotal": "6.25"},
        {"item_id": ink, "product_id": ink, "name": "Ink", "quantity": 1, "unit_price": "7.10",
         "subtotal": "7.10"}], "subtotal": "13.35"}
    status, cart = await api.call("PUT", f"/api/v1/cart/items/{ink}", headers=buyer["headers"],
                                  json={"quantity": 4})
    assert status == 200 and cart["subtotal"] == "34.65"
    status, cart = await api.call("DELETE", f"/api/v1/cart/items/{pen}", headers=buyer["headers"])
    assert status == 200 and [i["product_id"] for i in cart["items"]] == [ink]
    ttl = await redis.ttl(cart_key(buyer["user_id"]))
    assert CART_TTL_SECONDS - 5 < ttl <= CART_TTL_SECONDS


async def test_the_cart_shows_the_price_seen_when_adding(api) -> None:
    buyer = await shopper(api)
    item = await product(api, price="10.00")
    await add_to_cart(api, buyer, item)
    await api.call("PATCH", f"/api/v1/seller/products/{item}", headers=api.admin,
                   json={"price": "12.00"}, expect=200)
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart["items"][0]["unit_price"] == "10.00"  # re-checked at checkout, not here
    cart = await add_to_cart(api, buyer, item)  # adding again shows the current price
    assert cart["items"][0]["unit_price"] == "12.00" and cart["subtotal"] == "24.00"


async def test_bounds_unknown_products_and_stock(api) -> None:
    buyer = await shopper(api)
    item = await product(api, price="2.00", stock=5)
    for quantity in (0, -1, 100):
        status, err = await api.call("POST", "/api/v1/cart/items", headers=buyer["headers"],
                                     json={"product_id": item, "quantity": quantity})
        assert status == 422
        assert_error(err, "validation_failed")
        assert err["error"]["details"][0]["path"] == "$.quantity"
    status, err = await api.call("POST", "/api/v1/cart/items", headers=buyer["headers"],
                                 json={"product_id": 987654, "quantity": 1})
    assert status == 404
    assert_error(err, "not_found")
    status, err = await api.call("POST", "/api/v1/cart/items", headers=buyer["headers"],
                                 json={"product_id": item, "quantity": 6})
    assert status == 422
    assert_error(err, "insufficient_stock")
    assert err["error"]["details"] == {"available_qty": 5, "requested": 6}
    await api.call("PATCH", f"/api/v1/seller/products/{item}", headers=api.admin,
                   json={"status": "inactive"}, expect=200)
    status, err = await api.call("POST", "/api/v1/cart/items", headers=buyer["headers"],
                                 json={"product_id": item, "quantity": 1})
    assert status == 404
    for method, body in (("PUT", {"quantity": 1}), ("DELETE", None)):
        status, err = await api.call(method, f"/api/v1/cart/items/{item}",
                                     headers=buyer["headers"], json=body)
        assert status == 404
        assert_error(err, "not_found")
    status, err = await api.call("POST", "/api/v1/cart/items", headers=buyer["headers"],
                                 json={"product_id": item, "quantity": 1, "unit_price": "0.01"})
    assert status == 422  # no mass assignment of prices


async def test_bola_a_cart_is_its_owners_alone(api) -> None:
    alice, mallory = await shopper(api), await shopper(api)
    item = await product(api, price="3.00")
    await add_to_cart(api, alice, item, 2)
    for method, body in (("PUT", {"quantity": 9}), ("DELETE", None)):
        status, err = await api.call(method, f"/api/v1/cart/items/{item}",
                                     headers=mallory["headers"], json=body)
        assert status == 404
        assert_error(err, "not_found")
    _, theirs = await api.call("GET", "/api/v1/cart", headers=mallory["headers"])
    assert theirs["items"] == []
    _, cart = await api.call("GET", "/api/v1/cart", headers=alice["headers"])
    assert cart["items"][0]["quantity"] == 2
    status, err = await api.call("GET", "/api/v1/cart")
    assert status == 401


async def test_concurrent_adds_lose_no_unit(api) -> None:
    buyer = await shopper(api)
    items = [await product(api, price="1.00", stock=100) for _ in range(3)]
    calls = [api.call("POST", "/api/v1/cart/items", headers=buyer["headers"],
                      json={"product_id": items[n % 3], "quantity": 1}) for n in range(30)]
    results = await asyncio.gather(*calls)
    assert {s for s, _ in results} == {201}
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert sorted(i["quantity"] for i in cart["items"]) == [10, 10, 10]
    assert cart["subtotal"] == "30.00"


async def test_a_checkouts_units_leave_the_cart_once(api, redis) -> None:
    from tests.orders_support import services_of

    buyer = await shopper(api)
    odd = await product(api, price="2.50", name='Mug "Ünïcode" {q:1}')
    pen = await product(api, price="1.00", name="Pen")
    await add_to_cart(api, buyer, odd, 3)
    await add_to_cart(api, buyer, pen, 1)
    carts = services_of(api).carts
    assert await carts.remove_ordered(buyer["user_id"], {odd: 2, pen: 1}, checkout_id=7)
    assert not await carts.remove_ordered(buyer["user_id"], {odd: 2, pen: 1}, checkout_id=7)
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert [(i["product_id"], i["name"], i["quantity"], i["subtotal"]) for i in cart["items"]] == [
        (odd, 'Mug "Ünïcode" {q:1}', 1, "2.50")]
    assert await redis.hexists(cart_key(buyer["user_id"]), "done:7")
