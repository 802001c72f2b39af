"""Returns: delivered orders, within 30 days, refunds shared pro rata, restock, and the
order becomes ``returned`` when everything came back."""

from __future__ import annotations

from decimal import Decimal

from tests.conftest import assert_error
from tests.orders_support import add_to_cart, admin_move, place, product, shopper, stock


async def delivered_order(api, buyer: dict, *, pm: str = "card") -> tuple[dict, int, int]:
    """3 x 20.00 + 1 x 40.00 = 100.00, 10.00 off -> 90.00, tax 7.20, free shipping:
    97.20, delivered."""
    mug = await product(api, price="20.00", stock=10, name="Mug")
    lamp = await product(api, price="40.00", stock=10, name="Lamp")
    await add_to_cart(api, buyer, mug, 3)
    await add_to_cart(api, buyer, lamp, 1)
    await api.call("POST", "/api/v1/admin/coupons", headers=api.admin,
                   json={"code": f"TEN{buyer['user_id']}", "amount_off": "10.00"})
    status, order = await place(api, buyer, pm=pm, coupon_code=f"TEN{buyer['user_id']}")
    assert status == 201 and order["total"] == "97.20", order
    await admin_move(api, order["order_id"], "shipped")
    await admin_move(api, order["order_id"], "delivered")
    return order, mug, lamp


def item_of(order: dict, product_id: int) -> int:
    return next(i["order_item_id"] for i in order["items"] if i["product_id"] == product_id)


async def test_partial_then_full_return_refunds_exactly_what_was_paid_for_goods(
        api, pool) -> None:
    buyer = await shopper(api, wallet="200.00")
    order, mug, lamp = await delivered_order(api, buyer, pm="wallet")
    oid = order["order_id"]
    # 1 mug: 20.00 of 100.00 of goods, which cost 97.20 with discount and tax -> 19.44
    status, ret = await api.call("POST", f"/api/v1/orders/{oid}/returns", headers=buyer["headers"],
                                 json={"items": [{"order_item_id": item_of(order, mug),
                                                  "quantity": 1}], "reason": "chipped"})
    assert status == 201
    assert (ret["status"], ret["refund_amount"]) == ("requested", "19.44")
    status, decided = await api.call("POST", f"/api/v1/admin/returns/{ret['return_id']}/decision",
                                     headers=api.admin, json={"status": "refunded"})
    assert status == 200 and decided["status"] == "refunded"
    assert await stock(pool, mug) == (8, 2)
    _, got = await api.call("GET", f"/api/v1/orders/{oid}", headers=buyer["headers"])
    assert got["status"] == "delivered"
    assert got["payment"]["refunded_amount"] == "19.44"
    # the rest: exactly the remainder, 97.20 - 19.44 = 77.76
    status, rest = await api.call("POST", f"/api/v1/orders/{oid}/returns",
                                  headers=buyer["headers"], json={"items": [
                                      {"order_item_id": item_of(order, mug), "quantity": 2},
                                      {"order_item_id": item_of(order, lamp), "quantity": 1}],
                                      "reason": "changed my mind"})
    assert status == 201 and rest["refund_amount"] == "77.76"
    await api.call("POST", f"/api/v1/admin/returns/{rest['return_id']}/decision",
                   headers=api.admin, json={"status": "refunded"}, expect=200)
    _, got = await api.call("GET", f"/api/v1/orders/{oid}", headers=buyer["headers"])
    assert got["status"] == "returned"
    assert got["payment"] == {"method": "wallet", "status": "refunded", "amount": "97.20",
                              "refunded_amount": "97.20"}
    assert await pool.fetchval("SELECT wallet_balance FROM users WHERE user_id = $1",
                               buyer["user_id"]) == Decimal("200.00")
    assert await stock(pool, mug) == (10, 0) and await stock(pool, lamp) == (10, 0)
    _, listed = await api.call("GET", f"/api/v1/orders/{oid}/returns", headers=buyer["headers"])
    assert [r["status"] for r in listed] == ["refunded", "refunded"]
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY event_id")]
    assert topics.count("order.refunded") == 2 and topics[-2:] == ["order.returned",
                                                                   "order.refunded"]


async def test_return_rules(api, pool) -> None:
    buyer = await shopper(api)
    order, mug, lamp = await delivered_order(api, buyer)
    oid, mug_item = order["order_id"], item_of(order, mug)
    url = f"/api/v1/orders/{oid}/returns"
    for items, path in (([{"order_item_id": mug_item, "quantity": 4}], "$.items[0].quantity"),
                        ([{"order_item_id": 999999, "quantity": 1}], "$.items[0].order_item_id"),
                        ([{"order_item_id": mug_item, "quantity": 1}] * 2, "$.items"),
                        ([], "$.items")):
        status, err = await api.call("POST", url, headers=buyer["headers"],
                                     json={"items": items, "reason": "x"})
        assert status == 422, items
        assert_error(err, "validation_failed")
        assert err["error"]["details"][0]["path"] == path
    # a rejected return leaves the units returnable
    _, ret = await api.call("POST", url, headers=buyer["headers"], expect=201,
                            json={"items": [{"order_item_id": mug_item, "quantity": 3}],
                                  "reason": "x"})
    status, err = await api.call("POST", url, headers=buyer["headers"],
                                 json={"items": [{"order_item_id": mug_item, "quantity": 1}],
                                       "reason": "x"})
    assert status == 422  # all three are already on their way back
    await api.call("POST", f"/api/v1/admin/returns/{ret['return_id']}/decision",
                   headers=api.admin, json={"status": "rejected"}, expect=200)
    status, err = await api.call("POST", f"/api/v1/admin/returns/{ret['return_id']}/decision",
                                 headers=api.admin, json={"status": "refunded"})
    assert status == 409
    assert_error(err, "invalid_transition")
    await api.call("POST", url, headers=buyer["headers"], expect=201,
                   json={"items": [{"order_item_id": mug_item, "quantity": 1}], "reason": "x"})
    # 30 days after delivery the window is closed
    await pool.execute("UPDATE order_events SET at = at - interval '31 days'"
                       " WHERE order_id = $1 AND status = 'delivered'", oid)
    status, err = await api.call("POST", url, headers=buyer["headers"],
                                 json={"items": [{"order_item_id": mug_item, "quantity": 1}],
                                       "reason": "x"})
    assert status == 409
    assert_error(err, "invalid_transition")
    # only delivered orders
    fresh = await shopper(api)
    await add_to_cart(api, fresh, mug)
    _, paid = await place(api, fresh)
    status, err = await api.call("POST", f"/api/v1/orders/{paid['order_id']}/returns",
                                 headers=fresh["headers"], json={"items": [
                                     {"order_item_id": paid["items"][0]["order_item_id"],
                                      "quantity": 1}], "reason": "x"})
    assert status == 409
    assert_error(err, "invalid_transition")
