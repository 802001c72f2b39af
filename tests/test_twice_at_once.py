"""Every state-changing operation of the served OpenAPI document, sent ten times at once
(the same body, the same caller): no 5xx, only statuses the document lists for it, and
where the operation happens once by contract (an account, a review, an order for one
idempotency key, a wallet credit with a key, a refund, a hold given back) it happened
once; where it adds up (cart units) nothing was lost.

A race between two identical requests is the bug a client's retry finds first (a cart
checked out twenty times in parallel was one). The table below is checked against the
served document, so an operation added without a row here fails
``test_every_state_changing_operation_has_a_row``."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import Api, create_product, create_sale
from tests.orders_support import add_to_cart, admin_move, place, shopper, stock

N = 10
PASSWORD = "correct-horse-1"
MUTATING = {"post", "put", "patch", "delete"}
# Operations that cannot be sent twice by one caller in a meaningful way, none so far.
LEFT_OUT: set[str] = set()

Check = Callable[[list[int], list[object]], Awaitable[None]]


@dataclass
class Shot:
    method: str
    path: str
    headers: dict | None = None
    json: object = None
    # Called with the N statuses and bodies, after all have answered.
    check: Check | None = None
    allowed: set[int] = field(default_factory=set)  # beyond the document's (none so far)


Case = Callable[[Api, asyncpg.Pool], Awaitable[Shot]]
CASES: dict[str, Case] = {}


def case(key: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[key] = fn
        return fn
    return register


def once(created: int, others: set[int]) -> Check:
    """Exactly one answer ``created``, every other one of ``others``."""
    async def check(statuses: list[int], bodies: list[object]) -> None:
        counts = Counter(statuses)
        assert counts[created] == 1, statuses
        assert set(counts) - {created} <= others, statuses
    return check


# --- accounts ---------------------------------------------------------------------------

@case("POST /api/v1/auth/signup")
async def _signup(api: Api, pool: asyncpg.Pool) -> Shot:
    body = {"email": "twice@example.com", "password": PASSWORD, "name": "Twice"}
    return Shot("POST", "/api/v1/auth/signup", json=body, check=once(201, {409, 429}))


@case("POST /api/v1/auth/seller-signup")
async def _seller_signup(api: Api, pool: asyncpg.Pool) -> Shot:
    body = {"email": "twice-seller@example.com", "password": PASSWORD, "name": "Twice"}
    return Shot("POST", "/api/v1/auth/seller-signup", json=body, check=once(201, {409, 429}))


@case("POST /api/v1/auth/login")
async def _login(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    return Shot("POST", "/api/v1/auth/login",
                json={"email": user["email"], "password": PASSWORD})


@case("POST /api/v1/auth/logout-all")
async def _logout_all(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    return Shot("POST", "/api/v1/auth/logout-all", headers=user["headers"])


@case("POST /api/v1/me/password")
async def _password(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()

    async def check(statuses: list[int], bodies: list[object]) -> None:
        assert 200 in statuses, statuses
        await api.call("POST", "/api/v1/auth/login", expect=200,
                       json={"email": user["email"], "password": "another-horse-2"})
    return Shot("POST", "/api/v1/me/password", headers=user["headers"], check=check,
                json={"current_password": PASSWORD, "new_password": "another-horse-2"})


@case("POST /api/v1/me/addresses")
async def _address(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()

    async def check(statuses: list[int], bodies: list[object]) -> None:
        kept = await pool.fetchval("SELECT count(*) FROM addresses WHERE user_id = $1",
                                   user["user_id"])
        assert kept == statuses.count(201), (kept, statuses)
    return Shot("POST", "/api/v1/me/addresses", headers=user["headers"], check=check,
                json={"line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
                      "country": "US"})


@case("POST /api/v1/me/payment-methods")
async def _payment_method(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()

    async def check(statuses: list[int], bodies: list[object]) -> None:
        kept = await pool.fetchval(
            "SELECT count(*) FROM payment_methods WHERE user_id = $1", user["user_id"])
        assert kept == statuses.count(201), (kept, statuses)
    return Shot("POST", "/api/v1/me/payment-methods", headers=user["headers"], check=check,
                json={"type": "card", "card_number": "4242424242424242", "exp_month": 12,
                      "exp_year": 2099, "cvc": "123"})


@case("POST /api/v1/admin/wallets/{user_id}/credit")
async def _credit(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()

    async def check(statuses: list[int], bodies: list[object]) -> None:
        """With an idempotency key: credited once, every answer the one balance."""
        balance = await pool.fetchval("SELECT wallet_balance FROM users WHERE user_id = $1",
                                      user["user_id"])
        assert balance == Decimal("1.25") and set(statuses) == {200}, (balance, statuses)
        assert {b["balance"] for b in bodies} == {"1.25"}, bodies
    return Shot("POST", f"/api/v1/admin/wallets/{user['user_id']}/credit", headers=api.admin,
                json={"amount": "1.25", "idempotency_key": "bonus-1"}, check=check)


@case("PUT /api/v1/admin/users/{user_id}/role")
async def _role(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()

    async def check(statuses: list[int], bodies: list[object]) -> None:
        assert await pool.fetchval("SELECT role FROM users WHERE user_id = $1",
                                   user["user_id"]) == "seller"
    return Shot("PUT", f"/api/v1/admin/users/{user['user_id']}/role", headers=api.admin,
                json={"role": "seller"}, check=check)


# --- catalog ----------------------------------------------------------------------------

@case("POST /api/v1/products/{product_id}/reviews")
async def _review(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    product = await create_product(api)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        await once(201, {409})(statuses, bodies)
        row = await pool.fetchrow("SELECT rating_count, rating_avg FROM products"
                                  " WHERE product_id = $1", product["product_id"])
        assert (row["rating_count"], row["rating_avg"]) == (1, 4), dict(row)
    return Shot("POST", f"/api/v1/products/{product['product_id']}/reviews",
                headers=user["headers"], json={"rating": 4, "title": "Twice"}, check=check)


@case("POST /api/v1/admin/categories")
async def _category(api: Api, pool: asyncpg.Pool) -> Shot:
    return Shot("POST", "/api/v1/admin/categories", headers=api.admin,
                json={"name": "Twice lamps"}, check=once(201, {409}))


@case("POST /api/v1/seller/products")
async def _product(api: Api, pool: asyncpg.Pool) -> Shot:
    async def check(statuses: list[int], bodies: list[object]) -> None:
        kept = await pool.fetchval("SELECT count(*) FROM products WHERE name = 'Twice lamp'")
        assert kept == statuses.count(201) == N, (kept, statuses)
    return Shot("POST", "/api/v1/seller/products", headers=api.admin, check=check,
                json={"name": "Twice lamp", "price": "9.99", "available_qty": 5})


@case("PATCH /api/v1/seller/products/{product_id}")
async def _patch_product(api: Api, pool: asyncpg.Pool) -> Shot:
    product = await create_product(api)
    return Shot("PATCH", f"/api/v1/seller/products/{product['product_id']}",
                headers=api.admin, json={"price": "12.34", "brand": "Twice"})


@case("PUT /api/v1/seller/products/{product_id}/inventory")
async def _inventory(api: Api, pool: asyncpg.Pool) -> Shot:
    product = await create_product(api, stock=50)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        assert (await stock(pool, product["product_id"]))[0] == 7
    return Shot("PUT", f"/api/v1/seller/products/{product['product_id']}/inventory",
                headers=api.admin, json={"available_qty": 7}, check=check)


@case("PUT /api/v1/me/wishlist/{product_id}")
async def _wish(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    product = await create_product(api)
    return Shot("PUT", f"/api/v1/me/wishlist/{product['product_id']}", headers=user["headers"],
                check=once(201, {200}))


@case("DELETE /api/v1/me/wishlist/{product_id}")
async def _unwish(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    product = await create_product(api)
    await api.call("PUT", f"/api/v1/me/wishlist/{product['product_id']}",
                   headers=user["headers"], expect=201)
    return Shot("DELETE", f"/api/v1/me/wishlist/{product['product_id']}",
                headers=user["headers"])


# --- cart, orders, returns, coupons -----------------------------------------------------

@case("POST /api/v1/cart/items")
async def _cart_add(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    product = await create_product(api, stock=100)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        _, cart = await api.call("GET", "/api/v1/cart", headers=user["headers"], expect=200)
        units = sum(item["quantity"] for item in cart["items"])
        assert units == statuses.count(201), (units, statuses)
    return Shot("POST", "/api/v1/cart/items", headers=user["headers"], check=check,
                json={"product_id": product["product_id"], "quantity": 1})


async def _cart_line(api: Api) -> tuple[dict, int]:
    user = await api.signup()
    product = await create_product(api, stock=100)
    cart = await add_to_cart(api, user, product["product_id"], 1)
    return user, cart["items"][0]["item_id"]


@case("PUT /api/v1/cart/items/{item_id}")
async def _cart_set(api: Api, pool: asyncpg.Pool) -> Shot:
    user, item = await _cart_line(api)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        _, cart = await api.call("GET", "/api/v1/cart", headers=user["headers"], expect=200)
        assert [i["quantity"] for i in cart["items"]] == [3], cart
    return Shot("PUT", f"/api/v1/cart/items/{item}", headers=user["headers"],
                json={"quantity": 3}, check=check)


@case("DELETE /api/v1/cart/items/{item_id}")
async def _cart_remove(api: Api, pool: asyncpg.Pool) -> Shot:
    user, item = await _cart_line(api)
    return Shot("DELETE", f"/api/v1/cart/items/{item}", headers=user["headers"],
                check=once(200, {404}))


async def _ordered(api: Api, pool: asyncpg.Pool, *, pm: str = "card"
                   ) -> tuple[dict, dict, int]:
    """A shopper's paid order of 2 units of a product with 10 in stock."""
    user = await shopper(api, wallet="500.00")
    product = await create_product(api, stock=10, price="20.00")
    await add_to_cart(api, user, product["product_id"], 2)
    status, order = await place(api, user, pm=pm)
    assert status == 201, order
    return user, order, product["product_id"]


def refunded_once(pool: asyncpg.Pool, user: dict, order: dict, product_id: int, *,
                  others: set[int]) -> Check:
    """One answer 200, the order's units back in stock once, the wallet paid back once
    (the whole order on a cancel, the return's refund on a return)."""
    async def check(statuses: list[int], bodies: list[object]) -> None:
        await once(200, others)(statuses, bodies)
        assert (await stock(pool, product_id))[0] == 10
        answer = bodies[statuses.index(200)]
        refund = Decimal(answer.get("refund_amount", order["total"]))
        balance = await pool.fetchval("SELECT wallet_balance FROM users WHERE user_id = $1",
                                      user["user_id"])
        assert balance == Decimal("500.00") - Decimal(order["total"]) + refund, balance
    return check


@case("POST /api/v1/orders")
async def _order(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await shopper(api, wallet="500.00")
    product = await create_product(api, stock=10, price="20.00")
    await add_to_cart(api, user, product["product_id"], 2)
    body = {"idempotency_key": uuid.uuid4().hex, "shipping_address_id": user["address_id"],
            "payment_method_id": user["pm"]["wallet"]}

    async def check(statuses: list[int], bodies: list[object]) -> None:
        ids = {b["order_id"] for s, b in zip(statuses, bodies, strict=True) if s in (200, 201)}
        assert len(ids) == 1 and statuses.count(201) == 1, (statuses, bodies)
        assert set(statuses) <= {200, 201, 409}, statuses
        assert await pool.fetchval("SELECT count(*) FROM orders WHERE user_id = $1",
                                   user["user_id"]) == 1
        assert (await stock(pool, product["product_id"]))[0] == 8
        # 2 x 20.00 and its tax and shipping, charged once
        paid = Decimal("500.00") - await pool.fetchval(
            "SELECT wallet_balance FROM users WHERE user_id = $1", user["user_id"])
        assert paid == Decimal(bodies[statuses.index(201)]["total"]), paid
    return Shot("POST", "/api/v1/orders", headers=user["headers"], json=body, check=check)


@case("POST /api/v1/orders/{order_id}/cancel")
async def _cancel(api: Api, pool: asyncpg.Pool) -> Shot:
    user, order, product_id = await _ordered(api, pool, pm="wallet")
    return Shot("POST", f"/api/v1/orders/{order['order_id']}/cancel", headers=user["headers"],
                check=refunded_once(pool, user, order, product_id, others={409}))


@case("POST /api/v1/admin/orders/{order_id}/cancel")
async def _admin_cancel(api: Api, pool: asyncpg.Pool) -> Shot:
    user, order, product_id = await _ordered(api, pool, pm="wallet")
    return Shot("POST", f"/api/v1/admin/orders/{order['order_id']}/cancel", headers=api.admin,
                check=refunded_once(pool, user, order, product_id, others={409}))


@case("POST /api/v1/admin/orders/{order_id}/transition")
async def _transition(api: Api, pool: asyncpg.Pool) -> Shot:
    _, order, _ = await _ordered(api, pool)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        assert 200 in statuses and set(statuses) <= {200, 409}, statuses
        assert await pool.fetchval("SELECT count(*) FROM order_events WHERE order_id = $1"
                                   " AND status = 'shipped'", order["order_id"]) == 1
    return Shot("POST", f"/api/v1/admin/orders/{order['order_id']}/transition",
                headers=api.admin, json={"status": "shipped"}, check=check)


async def _delivered(api: Api, pool: asyncpg.Pool) -> tuple[dict, dict, int]:
    user, order, product_id = await _ordered(api, pool, pm="wallet")
    await admin_move(api, order["order_id"], "shipped")
    await admin_move(api, order["order_id"], "delivered")
    return user, order, product_id


@case("POST /api/v1/orders/{order_id}/returns")
async def _return(api: Api, pool: asyncpg.Pool) -> Shot:
    user, order, _ = await _delivered(api, pool)
    line = {"order_item_id": order["items"][0]["order_item_id"], "quantity": 2}

    async def check(statuses: list[int], bodies: list[object]) -> None:
        await once(201, {409, 422})(statuses, bodies)  # 422: nothing left to return
        assert await pool.fetchval("SELECT count(*) FROM returns WHERE order_id = $1",
                                   order["order_id"]) == 1
    return Shot("POST", f"/api/v1/orders/{order['order_id']}/returns", headers=user["headers"],
                json={"items": [line], "reason": "twice"}, check=check)


@case("POST /api/v1/admin/returns/{return_id}/decision")
async def _decision(api: Api, pool: asyncpg.Pool) -> Shot:
    user, order, product_id = await _delivered(api, pool)
    line = {"order_item_id": order["items"][0]["order_item_id"], "quantity": 2}
    _, ret = await api.call("POST", f"/api/v1/orders/{order['order_id']}/returns", expect=201,
                            headers=user["headers"], json={"items": [line], "reason": "x"})
    return Shot("POST", f"/api/v1/admin/returns/{ret['return_id']}/decision",
                headers=api.admin, json={"status": "refunded"},
                check=refunded_once(pool, user, order, product_id, others={409}))


@case("POST /api/v1/admin/coupons")
async def _coupon(api: Api, pool: asyncpg.Pool) -> Shot:
    return Shot("POST", "/api/v1/admin/coupons", headers=api.admin,
                json={"code": "TWICE10", "amount_off": "1.00"}, check=once(201, {409}))


# --- flash sales ------------------------------------------------------------------------

@case("POST /api/v1/admin/sales")
async def _sale(api: Api, pool: asyncpg.Pool) -> Shot:
    product = await create_product(api, stock=10)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        await once(201, {422})(statuses, bodies)
        assert (await stock(pool, product["product_id"]))[0] == 4
    return Shot("POST", "/api/v1/admin/sales", headers=api.admin, check=check,
                json={"product_id": product["product_id"], "quantity": 6, "price": "5.00"})


@case("POST /api/v1/sales/{sale_id}/queue")
async def _queue(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    sale = await create_sale(api, quantity=10, waiting_room=True)
    return Shot("POST", f"/api/v1/sales/{sale['sale_id']}/queue", headers=user["headers"],
                check=once(201, {200}))


async def _remaining(api: Api, sale_id: int) -> int:
    _, public = await api.call("GET", f"/api/v1/sales/{sale_id}", expect=200)
    return public["remaining"]


@case("POST /api/v1/sales/{sale_id}/reservations")
async def _reserve(api: Api, pool: asyncpg.Pool) -> Shot:
    user = await api.signup()
    sale = await create_sale(api, quantity=10, per_user_limit=5)

    async def check(statuses: list[int], bodies: list[object]) -> None:
        assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, statuses
        assert len({b["reservation_id"] for b in bodies}) == 1, bodies
        assert await _remaining(api, sale["sale_id"]) == 8
    return Shot("POST", f"/api/v1/sales/{sale['sale_id']}/reservations", check=check,
                headers=user["headers"], json={"quantity": 2, "idempotency_key": "twice"})


async def _held(api: Api) -> tuple[dict, dict, dict]:
    user = await api.signup()
    sale = await create_sale(api, quantity=10, per_user_limit=5)
    _, hold = await api.call("POST", f"/api/v1/sales/{sale['sale_id']}/reservations",
                             headers=user["headers"], expect=201,
                             json={"quantity": 2, "idempotency_key": "held"})
    return user, sale, hold


def released_once(api: Api, sale: dict) -> Check:
    async def check(statuses: list[int], bodies: list[object]) -> None:
        assert 200 in statuses and set(statuses) <= {200, 409}, statuses
        assert await _remaining(api, sale["sale_id"]) == 10
    return check


@case("DELETE /api/v1/reservations/{reservation_id}")
async def _release(api: Api, pool: asyncpg.Pool) -> Shot:
    user, sale, hold = await _held(api)
    return Shot("DELETE", f"/api/v1/reservations/{hold['reservation_id']}",
                headers=user["headers"], check=released_once(api, sale))


@case("DELETE /api/v1/admin/reservations/{reservation_id}")
async def _admin_release(api: Api, pool: asyncpg.Pool) -> Shot:
    _, sale, hold = await _held(api)
    return Shot("DELETE", f"/api/v1/admin/reservations/{hold['reservation_id']}",
                headers=api.admin, check=released_once(api, sale))


def _sale_action(action: str, before: tuple[str, ...] = ()) -> Case:
    async def make(api: Api, pool: asyncpg.Pool) -> Shot:
        sale = await create_sale(api, quantity=10)
        for step in before:
            await api.call("POST", f"/api/v1/admin/sales/{sale['sale_id']}/{step}",
                           headers=api.admin, expect=200)
        return Shot("POST", f"/api/v1/admin/sales/{sale['sale_id']}/{action}",
                    headers=api.admin)
    return make


case("POST /api/v1/admin/sales/{sale_id}/pause")(_sale_action("pause"))
case("POST /api/v1/admin/sales/{sale_id}/resume")(_sale_action("resume", ("pause",)))
case("POST /api/v1/admin/sales/{sale_id}/end")(_sale_action("end"))


# --- the tests --------------------------------------------------------------------------

async def _document(api: Api) -> dict:
    _, doc = await api.call("GET", "/api/v1/openapi.json", expect=200)
    return doc


async def test_every_state_changing_operation_has_a_row(api: Api) -> None:
    doc = await _document(api)
    served = {f"{method.upper()} {path}" for path, item in doc["paths"].items()
              for method in item if method in MUTATING}
    assert served - LEFT_OUT == set(CASES), (served - set(CASES), set(CASES) - served)


@pytest.mark.parametrize("key", sorted(CASES))
async def test_the_same_request_ten_times_at_once(api: Api, pool: asyncpg.Pool,
                                                  key: str) -> None:
    shot = await CASES[key](api, pool)
    method, template = key.split(" ", 1)
    documented = {int(code) for code in
                  (await _document(api))["paths"][template][method.lower()]["responses"]}
    answers = await asyncio.gather(*(
        api.call(shot.method, shot.path, headers=shot.headers, json=shot.json)
        for _ in range(N)))
    statuses = [status for status, _ in answers]
    bodies = [body for _, body in answers]
    assert all(status < 500 for status in statuses), answers
    assert set(statuses) <= documented | shot.allowed, (statuses, sorted(documented))
    if shot.check is not None:
        await shot.check(statuses, bodies)
