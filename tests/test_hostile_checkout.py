"""One cart, one order: parallel checkouts of one cart with different idempotency keys,
spread over two gateway apps (as over two worker processes), produce exactly one order
and one charge; the others get 409 ``conflict`` or 422 ``cart_empty``."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import Api, GatewayServer, assert_error
from tests.orders_support import add_to_cart, place, product, shopper, stock


@pytest.fixture
async def second_api(settings, database):
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    yield Api(client)
    await client.close()


@pytest.mark.parametrize("parallel", [2, 20])
async def test_parallel_checkouts_of_one_cart_make_one_order(api, second_api, pool,
                                                            parallel) -> None:
    buyer = await shopper(api)
    gadget = await product(api, price="12.50", stock=100)
    await add_to_cart(api, buyer, gadget, 2)
    gateways = [random.choice((api, second_api)) for _ in range(parallel)]
    results = await asyncio.gather(*(place(gw, buyer) for gw in gateways))

    created = [body for status, body in results if status == 201]
    assert len(created) == 1, results
    for status, body in results:
        if status == 409:
            assert_error(body, "conflict")
            assert "being checked out" in body["error"]["message"]
        elif status == 422:
            assert_error(body, "cart_empty")
        else:
            assert status == 201, (status, body)
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await pool.fetchval("SELECT count(*) FROM sim_card_charges") == 1
    assert await pool.fetchval("SELECT count(*) FROM payments") == 1
    assert await stock(pool, gadget) == (98, 2)
    _, cart = await api.call("GET", "/api/v1/cart", headers=buyer["headers"])
    assert cart["items"] == []

    # Sequentially afterwards: the cart is empty.
    status, body = await place(second_api, buyer)
    assert status == 422 and body["error"]["code"] == "cart_empty"


async def test_a_declined_checkout_frees_the_cart_for_the_next_one(api, pool) -> None:
    buyer = await shopper(api)
    gadget = await product(api, price="3.00", stock=10)
    await add_to_cart(api, buyer, gadget, 1)
    status, body = await place(api, buyer, pm="declined")
    assert status == 422 and body["error"]["code"] == "payment_declined"
    status, body = await place(api, buyer)
    assert status == 201, body
    assert await stock(pool, gadget) == (9, 1)


async def test_one_key_repeated_and_other_keys_at_once_still_make_one_order(api, pool) -> None:
    from tests.orders_support import order_body

    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="8.00", stock=10), 1)
    same = order_body(buyer)
    bodies = [same] * 8 + [order_body(buyer) for _ in range(8)]
    random.shuffle(bodies)
    results = await asyncio.gather(*(api.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                              json=body) for body in bodies))
    assert [s for s, _ in results].count(201) == 1, results
    for body, (status, answer) in zip(bodies, results, strict=True):
        if status in (409, 422):
            expected = {409: {"idempotency_key_in_use", "conflict"}, 422: {"cart_empty"}}
            assert answer["error"]["code"] in expected[status], answer
        else:
            assert status in (200, 201), answer
            assert status == 201 or body is same  # a replay is of the key that ordered
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await pool.fetchval("SELECT count(*) FROM sim_card_charges") == 1
