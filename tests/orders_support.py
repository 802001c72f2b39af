"""Shared helpers of the purchase-path tests (cart, checkout, orders, coupons, payments).
No tests live here."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg

from gateway.context import SERVICES
from tests.conftest import Api

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_NO_FUNDS = "4000000000009995"


async def shopper(api: Api, *, wallet: str | None = None) -> dict:
    """A signed-up user with an address and every kind of payment method."""
    user = await api.signup()
    headers = user["headers"]
    _, address = await api.call("POST", "/api/v1/me/addresses", headers=headers, expect=201,
                                json={"line1": "1 Main St", "city": "Springfield",
                                      "postal_code": "12345", "country": "US"})
    user["address_id"] = address["address_id"]
    methods = {}
    for name, number in (("card", CARD_OK), ("declined", CARD_DECLINED),
                         ("no_funds", CARD_NO_FUNDS)):
        _, pm = await api.call("POST", "/api/v1/me/payment-methods", headers=headers,
                               expect=201, json={"type": "card", "card_number": number,
                                                 "exp_month": 12, "exp_year": 2099,
                                                 "cvc": "123"})
        methods[name] = pm["payment_method_id"]
    for kind in ("wallet", "cod"):
        _, pm = await api.call("POST", "/api/v1/me/payment-methods", headers=headers,
                               expect=201, json={"type": kind})
        methods[kind] = pm["payment_method_id"]
    user["pm"] = methods
    if wallet is not None:
        await credit(api, user, wallet)
    return user


async def credit(api: Api, user: dict, amount: str) -> None:
    await api.call("POST", f"/api/v1/admin/wallets/{user['user_id']}/credit",
                   headers=api.admin, json={"amount": amount}, expect=200)


async def product(api: Api, *, price: str, stock: int = 100, name: str = "Widget") -> int:
    _, body = await api.call("POST", "/api/v1/seller/products", headers=api.admin, expect=201,
                             json={"name": name, "price": price, "available_qty": stock,
                                   "brand": "Acme"})
    return body["product_id"]


async def add_to_cart(api: Api, user: dict, product_id: int, quantity: int = 1) -> dict:
    _, cart = await api.call("POST", "/api/v1/cart/items", headers=user["headers"], expect=201,
                             json={"product_id": product_id, "quantity": quantity})
    return cart


def order_body(user: dict, *, pm: str = "card", key: str | None = None, **extra) -> dict:
    return {"idempotency_key": key or uuid.uuid4().hex,
            "shipping_address_id": user["address_id"],
            "payment_method_id": user["pm"][pm], **extra}


async def place(api: Api, user: dict, *, pm: str = "card", key: str | None = None,
                **extra) -> tuple[int, dict]:
    return await api.call("POST", "/api/v1/orders", headers=user["headers"],
                          json=order_body(user, pm=pm, key=key, **extra))


async def stock(pool: asyncpg.Pool, product_id: int) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT available_qty, sold_qty FROM inventory WHERE product_id = $1", product_id)
    return row["available_qty"], row["sold_qty"]


async def wallet(pool: asyncpg.Pool, user: dict) -> Decimal:
    return await pool.fetchval("SELECT wallet_balance FROM users WHERE user_id = $1",
                               user["user_id"])


def services_of(api: Api):
    return api.client.app[SERVICES]


async def admin_move(api: Api, order_id: int, status: str) -> tuple[int, dict]:
    return await api.call("POST", f"/api/v1/admin/orders/{order_id}/transition",
                          headers=api.admin, json={"status": status})
