"""What clients see of an order: msgspec structs, encoded once, stored verbatim as the
checkout's idempotent response and served by the order endpoints."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec


class OrderItemView(msgspec.Struct):
    order_item_id: int
    product_id: int
    name: str
    quantity: int
    unit_price: Decimal
    subtotal: Decimal
    sale_id: int | None = None


class OrderEventView(msgspec.Struct):
    status: str
    at: datetime
    note: str | None = None


class PaymentView(msgspec.Struct):
    method: str
    status: str
    amount: Decimal
    refunded_amount: Decimal


class OrderView(msgspec.Struct):
    order_id: int
    status: str
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    shipping_fee: Decimal
    total: Decimal
    currency: str
    items: list[OrderItemView]
    events: list[OrderEventView]
    payment: PaymentView | None
    shipping_address_id: int | None
    payment_method_id: int | None
    coupon_code: str | None
    reservation_id: str | None
    created_at: datetime
    updated_at: datetime


ORDER_COLUMNS = ("o.order_id, o.user_id, o.status, o.subtotal, o.discount, o.tax,"
                 " o.shipping_fee, o.total, o.currency, o.shipping_address_id,"
                 " o.payment_method_id, o.coupon_code, o.reservation_id, o.created_at,"
                 " o.updated_at")


async def load_views(conn: asyncpg.Connection | asyncpg.Pool,
                     orders: list[asyncpg.Record]) -> list[OrderView]:
    """Views of these ``orders`` rows (selected with ORDER_COLUMNS): items, events and
    payment fetched for all of them at once."""
    ids = [o["order_id"] for o in orders]
    if not ids:
        return []
    items = await conn.fetch(
        "SELECT oi.order_id, oi.order_item_id, oi.product_id, p.name, oi.quantity,"
        " oi.unit_price, oi.subtotal, oi.sale_id FROM order_items oi"
        " JOIN products p USING (product_id) WHERE oi.order_id = ANY($1)"
        " ORDER BY oi.order_item_id", ids)
    events = await conn.fetch(
        "SELECT order_id, status, at, note FROM order_events WHERE order_id = ANY($1)"
        " ORDER BY event_id", ids)
    payments = await conn.fetch(
        "SELECT order_id, method, status, amount, refunded_amount FROM payments"
        " WHERE order_id = ANY($1)", ids)
    by_order: dict[int, dict[str, list]] = {i: {"items": [], "events": []} for i in ids}
    for r in items:
        by_order[r["order_id"]]["items"].append(OrderItemView(
            order_item_id=r["order_item_id"], product_id=r["product_id"], name=r["name"],
            quantity=r["quantity"], unit_price=r["unit_price"], subtotal=r["subtotal"],
            sale_id=r["sale_id"]))
    for r in events:
        by_order[r["order_id"]]["events"].append(
            OrderEventView(status=r["status"], at=r["at"], note=r["note"]))
    paid = {r["order_id"]: PaymentView(method=r["method"], status=r["status"],
                                       amount=r["amount"], refunded_amount=r["refunded_amount"])
            for r in payments}
    return [OrderView(
        order_id=o["order_id"], status=o["status"], subtotal=o["subtotal"],
        discount=o["discount"], tax=o["tax"], shipping_fee=o["shipping_fee"], total=o["total"],
        currency=o["currency"], items=by_order[o["order_id"]]["items"],
        events=by_order[o["order_id"]]["events"], payment=paid.get(o["order_id"]),
        shipping_address_id=o["shipping_address_id"], payment_method_id=o["payment_method_id"],
        coupon_code=o["coupon_code"], reservation_id=o["reservation_id"],
        created_at=o["created_at"], updated_at=o["updated_at"]) for o in orders]


async def load_view(conn: asyncpg.Connection | asyncpg.Pool, order_id: int) -> OrderView | None:
    row = await conn.fetchrow(f"SELECT {ORDER_COLUMNS} FROM orders o WHERE o.order_id = $1",
                              order_id)
    if row is None:
        return None
    return (await load_views(conn, [row]))[0]
