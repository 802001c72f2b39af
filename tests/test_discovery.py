"""Wishlist and "customers also bought": HTTP behaviour, the notifications, and the
co-purchase counts against a plain-Python count under generated and concurrent orders."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from decimal import Decimal
from itertools import permutations

import asyncpg
import pytest

from catalog.wishlist import WISHLIST_CAP
from tests.conftest import assert_error
from tests.orders_support import add_to_cart, admin_move, place, product, shopper


async def _items(api, user) -> list[dict]:
    _, body = await api.call("GET", "/api/v1/me/wishlist", headers=user["headers"], expect=200)
    return body["items"]


# -- wishlist ----------------------------------------------------------------------------
async def test_wishlist_add_list_remove_newest_first_with_live_figures(api, pool) -> None:
    user = await api.signup()
    ids = [await product(api, price=f"{10 + n}.00", stock=n, name=f"Thing {n}")
           for n in range(3)]
    for pid in ids:
        status, item = await api.call("PUT", f"/api/v1/me/wishlist/{pid}",
                                      headers=user["headers"])
        assert status == 201 and item["product_id"] == pid
    listed = await _items(api, user)
    assert [i["product_id"] for i in listed] == ids[::-1]
    assert {"product_id", "name", "price", "available_qty", "added_at",
            "price_when_added", "status"} <= set(listed[0])
    # Live figures: a price and stock changed after adding show at once.
    await api.call("PATCH", f"/api/v1/seller/products/{ids[0]}", headers=api.admin,
                   json={"price": "7.50"}, expect=200)
    await api.call("PUT", f"/api/v1/seller/products/{ids[0]}/inventory", headers=api.admin,
                   json={"available_qty": 42}, expect=200)
    first = next(i for i in await _items(api, user) if i["product_id"] == ids[0])
    assert (first["price"], first["price_when_added"], first["available_qty"]) == \
        ("7.50", "10.00", 42)
    status, body = await api.call("DELETE", f"/api/v1/me/wishlist/{ids[1]}",
                                  headers=user["headers"])
    assert status == 200 and [i["product_id"] for i in body["items"]] == [ids[2], ids[0]]
    status, err = await api.call("DELETE", f"/api/v1/me/wishlist/{ids[1]}",
                                 headers=user["headers"])
    assert status == 404
    assert_error(err, "not_found")


async def test_wishlist_add_is_idempotent_even_when_concurrent(api) -> None:
    user = await api.signup()
    pid = await product(api, price="5.00")
    answers = await asyncio.gather(*(
        api.call("PUT", f"/api/v1/me/wishlist/{pid}", headers=user["headers"])
        for _ in range(8)))
    assert sorted(s for s, _ in answers) == [200] * 7 + [201]
    assert len({b["added_at"] for _, b in answers}) == 1
    assert [i["product_id"] for i in await _items(api, user)] == [pid]


async def test_wishlist_is_owner_only(api) -> None:
    alice, bob = await api.signup(), await api.signup()
    pid = await product(api, price="5.00")
    await api.call("PUT", f"/api/v1/me/wishlist/{pid}", headers=alice["headers"], expect=201)
    assert await _items(api, bob) == []
    status, err = await api.call("DELETE", f"/api/v1/me/wishlist/{pid}", headers=bob["headers"])
    assert status == 404
    assert_error(err, "not_found")
    assert [i["product_id"] for i in await _items(api, alice)] == [pid]
    for method in ("GET", "PUT", "DELETE"):
        path = "/api/v1/me/wishlist" + ("" if method == "GET" else f"/{pid}")
        status, err = await api.call(method, path)
        assert status == 401
        assert_error(err, "unauthorized")


async def test_wishlist_refuses_unknown_and_unsold_products(api) -> None:
    user = await api.signup()
    for path_id in ("987654321", "abc", "-1"):
        status, err = await api.call("PUT", f"/api/v1/me/wishlist/{path_id}",
                                     headers=user["headers"])
        assert status == 404
        assert_error(err, "not_found")
    pid = await product(api, price="5.00")
    await api.call("PATCH", f"/api/v1/seller/products/{pid}", headers=api.admin,
                   json={"status": "archived"}, expect=200)
    status, _ = await api.call("PUT", f"/api/v1/me/wishlist/{pid}", headers=user["headers"])
    assert status == 404


async def test_wishlist_cap_holds_under_concurrent_adds(api, pool) -> None:
    user = await api.signup()
    async with pool.acquire() as conn:
        ids = [r["product_id"] for r in await conn.fetch(
            "INSERT INTO products (name, price) SELECT 'Filler ' || n, 1 FROM"
            " generate_series(1, $1) n RETURNING product_id", WISHLIST_CAP + 6)]
        await conn.execute(
            "INSERT INTO wishlist_items (user_id, product_id, price_at_added)"
            " SELECT $1, unnest($2::bigint[]), 1", user["user_id"], ids[:WISHLIST_CAP - 2])
    answers = await asyncio.gather(*(
        api.call("PUT", f"/api/v1/me/wishlist/{pid}", headers=user["headers"])
        for pid in ids[WISHLIST_CAP - 2:]))
    assert sorted(s for s, _ in answers) == [201, 201] + [422] * 6
    for status, body in answers:
        if status == 422:
            assert_error(body, "wishlist_full")
    assert len(await _items(api, user)) == WISHLIST_CAP
    # Re-adding a listed product at the cap is still the idempotent 200.
    await api.call("PUT", f"/api/v1/me/wishlist/{ids[0]}", headers=user["headers"], expect=200)


async def test_price_drop_and_back_in_stock_notify_wishers_through_the_outbox(api, pool) -> None:
    fans = [await api.signup() for _ in range(2)]
    other = await api.signup()
    pid = await product(api, price="30.00", stock=0, name="Rare Lamp")
    unrelated = await product(api, price="30.00", stock=0)
    for fan in fans:
        await api.call("PUT", f"/api/v1/me/wishlist/{pid}", headers=fan["headers"], expect=201)
    await api.call("PUT", f"/api/v1/me/wishlist/{unrelated}", headers=other["headers"],
                   expect=201)
    await api.call("PATCH", f"/api/v1/seller/products/{pid}", headers=api.admin,
                   json={"price": "35.00"}, expect=200)  # dearer: nothing
    await api.call("PATCH", f"/api/v1/seller/products/{pid}", headers=api.admin,
                   json={"price": "24.99"}, expect=200)
    await api.call("PUT", f"/api/v1/seller/products/{pid}/inventory", headers=api.admin,
                   json={"available_qty": 3}, expect=200)
    await api.call("PUT", f"/api/v1/seller/products/{pid}/inventory", headers=api.admin,
                   json={"available_qty": 5}, expect=200)  # was in stock already: nothing
    rows = await pool.fetch("SELECT topic, user_id, order_id, payload FROM outbox"
                            " ORDER BY event_id")
    fan_ids = sorted(f["user_id"] for f in fans)
    assert [(r["topic"], r["user_id"]) for r in rows] == (
        [("wishlist.price_drop", u) for u in fan_ids]
        + [("wishlist.back_in_stock", u) for u in fan_ids])
    assert all(r["order_id"] is None for r in rows)
    drop = rows[0]["payload"]
    assert drop == {"product_id": pid, "name": "Rare Lamp", "old_price": "35.00",
                    "price": "24.99", "currency": "USD"}
    assert rows[-1]["payload"]["available_qty"] == 3


# -- customers also bought ---------------------------------------------------------------
async def _buy(api, buyer, products: list[int]) -> dict:
    for pid in products:
        await add_to_cart(api, buyer, pid)
    status, order = await place(api, buyer)
    assert status == 201, order
    return order


async def _also(api, pid: int, limit: int = 10) -> dict:
    _, body = await api.call("GET", f"/api/v1/products/{pid}/also-bought?limit={limit}",
                             expect=200)
    return body


async def test_also_bought_ranks_by_orders_together_and_cancellation_drops_out(api, pool) -> None:
    buyer = await shopper(api)
    a, b, c, d, e = [await product(api, price="10.00", stock=50, name=f"P{n}")
                     for n in range(5)]
    await _buy(api, buyer, [a, b, c, d])
    await _buy(api, buyer, [b, a, c])
    await _buy(api, buyer, [a, b])
    cancelled = await _buy(api, buyer, [a, e])
    body = await _also(api, a)
    assert body["fallback"] is False
    assert [(i["product_id"], i["orders_together"]) for i in body["items"]] == \
        [(b, 3), (c, 2), (d, 1), (e, 1)]
    await api.call("POST", f"/api/v1/orders/{cancelled['order_id']}/cancel",
                   headers=buyer["headers"], expect=200)
    body = await _also(api, a)
    assert [(i["product_id"], i["orders_together"]) for i in body["items"]] == \
        [(b, 3), (c, 2), (d, 1)]
    assert [i["product_id"] for i in (await _also(api, e))["items"]] != [a]
    # Symmetric, never the product itself, limit respected.
    assert [i["product_id"] for i in (await _also(api, d))["items"]] == [a, b, c]
    assert [i["product_id"] for i in (await _also(api, a, limit=2))["items"]] == [b, c]
    # Unavailable products are left out: out of stock, or no longer active.
    await api.call("PUT", f"/api/v1/seller/products/{b}/inventory", headers=api.admin,
                   json={"available_qty": 0}, expect=200)
    await api.call("PATCH", f"/api/v1/seller/products/{c}", headers=api.admin,
                   json={"status": "inactive"}, expect=200)
    assert [i["product_id"] for i in (await _also(api, a))["items"]] == [d]


async def test_also_bought_ties_go_to_rating_then_id(api, pool) -> None:
    buyer = await shopper(api)
    a, low, high, same = [await product(api, price="10.00", stock=50) for _ in range(4)]
    for pid, rating in ((low, "3.50"), (high, "4.80"), (same, "3.50")):
        await pool.execute("UPDATE products SET rating_avg = $2 WHERE product_id = $1",
                           pid, Decimal(rating))
    await _buy(api, buyer, [a, low, high, same])
    assert [i["product_id"] for i in (await _also(api, a))["items"]] == [high, low, same]
    assert [i["product_id"] for i in (await _also(api, a, limit=1))["items"]] == [high]
    # A rating that changes later re-ranks the ties at once.
    await pool.execute("UPDATE products SET rating_avg = 5 WHERE product_id = $1", same)
    assert [i["product_id"] for i in (await _also(api, a))["items"]] == [same, high, low]


async def test_returned_orders_stop_counting(api, pool) -> None:
    buyer = await shopper(api)
    a, b = await product(api, price="10.00"), await product(api, price="10.00")
    order = await _buy(api, buyer, [a, b])
    for target in ("shipped", "delivered"):
        status, _ = await admin_move(api, order["order_id"], target)
        assert status == 200
    assert [i["product_id"] for i in (await _also(api, a))["items"]] == [b]
    await pool.execute("UPDATE orders SET status = 'returned' WHERE order_id = $1",
                       order["order_id"])
    assert (await _also(api, a))["fallback"] is True


async def test_cold_start_falls_back_to_top_rated_of_the_category_marked(api, pool) -> None:
    _, cat = await api.call("POST", "/api/v1/admin/categories", headers=api.admin,
                            json={"name": "Lamps"}, expect=201)
    ids = []
    for n, rating in enumerate(("4.90", "2.00", "4.10", "5.00", "3.00")):
        _, p = await api.call("POST", "/api/v1/seller/products", headers=api.admin, expect=201,
                              json={"name": f"Lamp {n}", "price": "20.00", "available_qty": 5,
                                    "category_id": cat["category_id"]})
        await pool.execute("UPDATE products SET rating_avg = $2 WHERE product_id = $1",
                           p["product_id"], Decimal(rating))
        ids.append(p["product_id"])
    await api.call("PUT", f"/api/v1/seller/products/{ids[2]}/inventory", headers=api.admin,
                   json={"available_qty": 0}, expect=200)
    body = await _also(api, ids[3], limit=3)
    assert body["fallback"] is True
    assert [(i["product_id"], i["orders_together"]) for i in body["items"]] == \
        [(ids[0], 0), (ids[4], 0), (ids[1], 0)]
    status, err = await api.call("GET", "/api/v1/products/987654321/also-bought")
    assert status == 404
    assert_error(err, "not_found")
    status, err = await api.call("GET", f"/api/v1/products/{ids[0]}/also-bought?limit=0")
    assert status == 422
    assert_error(err, "validation_failed")


async def _new_order(conn: asyncpg.Connection, user_id: int, basket: list[int]) -> int:
    async with conn.transaction():
        order_id = await conn.fetchval(
            "INSERT INTO orders (user_id, idempotency_key, status, subtotal, total)"
            " VALUES ($1, $2, 'placed', 0, 0) RETURNING order_id", user_id, uuid.uuid4().hex)
        await conn.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price, subtotal)"
            " VALUES ($1, $2, 1, 0, 0)", [(order_id, p) for p in basket])
        await conn.execute("UPDATE orders SET status = 'paid' WHERE order_id = $1", order_id)
    return order_id


@pytest.mark.parametrize("seed", [1, 2])
async def test_copurchase_counts_equal_a_recount_under_concurrent_orders(pool, seed) -> None:
    """Generated baskets (repeats, overlaps) paid by concurrent transactions, then some
    cancelled, returned or paid again: the counts equal a plain-Python count, and no
    concurrent pair of orders deadlocks or loses an update."""
    rng = random.Random(seed)
    user_id = await pool.fetchval("INSERT INTO users (email, name, password_hash)"
                                  " VALUES ($1, 'b', 'x') RETURNING user_id",
                                  f"{uuid.uuid4().hex}@example.com")
    products = [r["product_id"] for r in await pool.fetch(
        "INSERT INTO products (name, price) SELECT 'P' || n, 1 FROM generate_series(1, 8) n"
        " RETURNING product_id")]
    baskets = [[rng.choice(products) for _ in range(rng.randint(1, 5))] for _ in range(60)]

    async def buy(basket: list[int]) -> int:
        async with pool.acquire() as conn:
            return await _new_order(conn, user_id, basket)

    order_ids = await asyncio.gather(*(buy(b) for b in baskets))
    status = {}
    for oid in order_ids:
        status[oid] = rng.choice(("paid", "paid", "shipped", "delivered", "cancelled",
                                  "returned", "placed"))
    async with pool.acquire() as conn:
        for oid, target in status.items():
            await conn.execute("UPDATE orders SET status = $2 WHERE order_id = $1", oid, target)
        for oid in rng.sample(order_ids, 10):  # repeat a status: counted once
            await conn.execute("UPDATE orders SET status = status WHERE order_id = $1", oid)
    expected: Counter = Counter()
    for oid, basket in zip(order_ids, baskets, strict=True):
        if status[oid] in ("paid", "shipped", "delivered"):
            expected.update(permutations(sorted(set(basket)), 2))
    got = {(r["product_id"], r["other_id"]): r["orders"] for r in await pool.fetch(
        "SELECT product_id, other_id, orders FROM copurchases WHERE orders > 0")}
    assert got == dict(expected)
    await pool.execute("SELECT copurchase_rebuild()")
    rebuilt = {(r["product_id"], r["other_id"]): r["orders"] for r in await pool.fetch(
        "SELECT product_id, other_id, orders FROM copurchases WHERE orders > 0")}
    assert rebuilt == got
