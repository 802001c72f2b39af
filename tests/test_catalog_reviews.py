"""Reviews (exact rating arithmetic under concurrency) and the seller dashboard."""

from __future__ import annotations

import asyncio
from decimal import ROUND_HALF_UP, Decimal

from tests.conftest import assert_error
from tests.test_catalog_products import new_product, seller


async def test_twenty_concurrent_reviews_give_exact_figures(api) -> None:
    shop = await seller(api)
    pid = (await new_product(api, shop))["product_id"]
    buyers = await asyncio.gather(*(api.signup() for _ in range(20)))
    ratings = [(i * 7) % 5 + 1 for i in range(20)]
    results = await asyncio.gather(*(
        api.call("POST", f"/api/v1/products/{pid}/reviews", headers=b["headers"],
                 json={"rating": r, "title": f"t{i}", "body": "ok"})
        for i, (b, r) in enumerate(zip(buyers, ratings, strict=True))))
    assert [status for status, _ in results] == [201] * 20
    want = (Decimal(sum(ratings)) / 20).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    _, page = await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    assert (page["rating_count"], Decimal(page["rating_avg"])) == (20, want)
    _, listing = await api.call("GET", f"/api/v1/products/{pid}/reviews?page_size=8",
                                expect=200)
    assert listing["total"] == 20 and len(listing["items"]) == 8
    assert (listing["rating_count"], Decimal(listing["rating_avg"])) == (20, want)
    seen = []
    for number in (1, 2, 3):
        _, part = await api.call(
            "GET", f"/api/v1/products/{pid}/reviews?page_size=8&page={number}", expect=200)
        seen += [r["review_id"] for r in part["items"]]
    assert len(seen) == len(set(seen)) == 20
    _, best = await api.call("GET", f"/api/v1/products/{pid}/reviews?sort=rating_desc",
                             expect=200)
    assert [r["rating"] for r in best["items"]] == sorted(ratings, reverse=True)
    first = best["items"][0]
    assert set(first) == {"review_id", "product_id", "author", "rating", "title", "body",
                          "verified_purchase", "created_at"}
    assert first["author"] == "Test User" and first["verified_purchase"] is False


async def test_one_review_per_user_even_when_racing(api) -> None:
    shop = await seller(api)
    pid = (await new_product(api, shop))["product_id"]
    buyer = await api.signup()
    results = await asyncio.gather(*(
        api.call("POST", f"/api/v1/products/{pid}/reviews", headers=buyer["headers"],
                 json={"rating": 5}) for _ in range(5)))
    assert sorted(status for status, _ in results) == [201, 409, 409, 409, 409]
    assert_error(next(body for status, body in results if status == 409), "conflict")
    _, page = await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    assert (page["rating_count"], page["rating_avg"]) == (1, "5.00")


async def test_review_validation_and_auth(api) -> None:
    shop = await seller(api)
    pid = (await new_product(api, shop))["product_id"]
    buyer = await api.signup()
    for body in ({"rating": 0}, {"rating": 6}, {"rating": "5"}, {"title": "no rating"},
                 {"rating": 4, "user_id": 1}, {"rating": 4, "body": "x" * 5001}):
        status, err = await api.call("POST", f"/api/v1/products/{pid}/reviews", json=body,
                                     headers=buyer["headers"])
        assert status == 422, body
        assert_error(err, "validation_failed")
    status, err = await api.call("POST", f"/api/v1/products/{pid}/reviews", json={"rating": 4})
    assert status == 401
    status, err = await api.call("POST", "/api/v1/products/987654/reviews", json={"rating": 4},
                                 headers=buyer["headers"])
    assert status == 404
    assert_error(err, "not_found")
    status, _ = await api.call("GET", "/api/v1/products/987654/reviews")
    assert status == 404


async def test_verified_purchase_and_dashboard_figures(api, pool) -> None:
    shop, other = await seller(api), await seller(api)
    a = await new_product(api, shop, name="Acme Kettle", price="20.00", available_qty=3)
    b = await new_product(api, shop, name="Acme Mug", price="5.50", available_qty=0)
    c = await new_product(api, shop, name="Acme Tray", price="9.00", available_qty=40)
    await new_product(api, other, name="Other Thing", price="1.00")
    await api.call("PATCH", f"/api/v1/seller/products/{c['product_id']}",
                   json={"status": "archived"}, headers=shop["headers"], expect=200)
    buyer = await api.signup()
    # orders as checkout writes them: (status, [(product, qty, unit price)])
    orders = [("paid", [(a, 2, "20.00"), (b, 1, "5.50")]), ("delivered", [(a, 1, "19.00")]),
              ("cancelled", [(a, 5, "20.00")]), ("placed", [(b, 4, "5.50")])]
    for n, (status, lines) in enumerate(orders):
        order_id = await pool.fetchval(
            "INSERT INTO orders (user_id, idempotency_key, status, subtotal, total)"
            " VALUES ($1, $2, $3, 0, 0) RETURNING order_id", buyer["user_id"], f"k{n}", status)
        for product, qty, unit in lines:
            await pool.execute(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price, subtotal)"
                " VALUES ($1, $2, $3, $4, $5)", order_id, product["product_id"],
                qty, Decimal(unit), Decimal(unit) * qty)
    await api.call("POST", f"/api/v1/products/{a['product_id']}/reviews", expect=201,
                   headers=buyer["headers"], json={"rating": 4})
    _, reviews = await api.call("GET", f"/api/v1/products/{a['product_id']}/reviews",
                                expect=200)
    assert reviews["items"][0]["verified_purchase"] is True
    _, board = await api.call("GET", "/api/v1/seller/dashboard", headers=shop["headers"],
                              expect=200)
    assert board["seller_id"] == shop["user_id"]
    assert board["products"] == {"total": 3, "active": 2, "inactive": 0, "archived": 1}
    assert board["stock"] == {"available_units": 43, "reserved_units": 0, "out_of_stock": 1,
                              "low_stock": 1}
    # paid + delivered + placed count, cancelled does not: a 2+1, b 1+4
    assert board["sales"]["orders"] == 3 and board["sales"]["units_sold"] == 8
    assert board["sales"]["revenue"] == {"USD": "86.50"}  # 40 + 5.50 + 19 + 22
    assert [(t["product_id"], t["units_sold"], t["revenue"]) for t in board["top_products"]] \
        == [(a["product_id"], 3, "59.00"), (b["product_id"], 5, "27.50")]
    assert (board["rating_count"], board["rating_avg"]) == (1, "4.00")
    # an admin names the seller; a seller cannot look at another
    _, same = await api.call("GET", f"/api/v1/seller/dashboard?seller_id={shop['user_id']}",
                             headers=api.admin, expect=200)
    assert same == board
    _, theirs = await api.call("GET", f"/api/v1/seller/dashboard?seller_id={shop['user_id']}",
                               headers=other["headers"], expect=200)
    assert theirs["seller_id"] == other["user_id"] and theirs["sales"]["units_sold"] == 0
    status, err = await api.call("GET", "/api/v1/seller/dashboard", headers=api.admin)
    assert status == 422
    status, err = await api.call("GET", "/api/v1/seller/dashboard?seller_id=99999",
                                 headers=api.admin)
    assert status == 404
    status, err = await api.call("GET", "/api/v1/seller/dashboard",
                                 headers=buyer["headers"])
    assert status == 403
    assert_error(err, "forbidden")
