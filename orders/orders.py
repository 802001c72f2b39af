"""Orders after checkout: reads, the state machine, tracking events, cancellation.

    placed ──capture──> paid ──> shipped ──> delivered ──(returns)──> returned
      │  └─(cash on delivery)────┘
      └──────────┴──> cancelled   (owner, before shipping: refund and restock)

Every change locks the order row, checks the edge, and writes the new status, its
tracking event and its notification (outbox) in one transaction. Side effects outside
Postgres (refund at the provider, a flash unit back on sale) are order tasks recorded in
that transaction and run right after it (orders/tasks.py).
"""

from __future__ import annotations

import asyncpg

from engine.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from engine.sales import Sales
from orders import outbox, tasks
from orders.coupons import Coupons
from orders.payments import Payments
from orders.tasks import OrderTasks
from orders.txn import retrying
from orders.views import ORDER_COLUMNS, OrderView, load_view, load_views

STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled", "returned")
# (from, to) -> who may make the move; "cod" edges need a cash-on-delivery order.
EDGES = {
    ("placed", "paid"): "checkout",
    ("placed", "shipped"): "admin:cod",
    ("placed", "cancelled"): "owner",
    ("paid", "shipped"): "admin",
    ("paid", "cancelled"): "owner",
    ("shipped", "delivered"): "admin",
    ("delivered", "returned"): "returns",
}
TOPIC = {"shipped": "order.shipped", "delivered": "order.delivered",
         "cancelled": "order.cancelled", "returned": "order.returned"}
RUNNING_SALE = ("active", "paused", "sold_out")


def refuse(current: str, target: str, why: str | None = None) -> InvalidTransition:
    return InvalidTransition(why or f"An order that is {current} cannot become {target}.",
                             details={"from": current, "to": target})


async def record_move(conn: asyncpg.Connection, order: asyncpg.Record, target: str, *,
                      note: str | None = None) -> None:
    """The new status, its tracking event and its notification (inside the caller's
    transaction, with the order row locked)."""
    await conn.execute("UPDATE orders SET status = $2, updated_at = now() WHERE order_id = $1",
                       order["order_id"], target)
    await conn.execute("INSERT INTO order_events (order_id, status, note) VALUES ($1, $2, $3)",
                       order["order_id"], target, note)
    await outbox.enqueue(conn, TOPIC[target], order_id=order["order_id"],
                         user_id=order["user_id"], data={"status": target, "total": order["total"]})


async def lock_order(conn: asyncpg.Connection, order_id: int) -> asyncpg.Record:
    """The order row, locked, with its payment."""
    order = await conn.fetchrow(
        "SELECT o.order_id, o.user_id, o.status, o.total, o.subtotal, o.shipping_fee,"
        " o.reservation_id, p.payment_id, p.checkout_id, p.method, p.status AS payment_status,"
        " p.amount, p.refunded_amount FROM orders o"
        " LEFT JOIN payments p ON p.order_id = o.order_id"
        " WHERE o.order_id = $1 FOR UPDATE OF o", order_id)
    if order is None:
        raise NotFound("No such order.")
    return order


class Orders:
    def __init__(self, *, pool: asyncpg.Pool, sales: Sales, tasks: OrderTasks) -> None:
        self._pool = pool
        self._sales = sales
        self._tasks = tasks

    # -- reads ---------------------------------------------------------------------------
    async def get(self, order_id: int, *, user_id: int, is_admin: bool = False) -> OrderView:
        owner = await self._owner(order_id)
        view = await load_view(self._pool, order_id) if owner is not None else None
        if view is None or not (is_admin or owner == user_id):
            raise NotFound("No such order.")
        return view

    async def _owner(self, order_id: int) -> int | None:
        return await self._pool.fetchval("SELECT user_id FROM orders WHERE order_id = $1",
                                         order_id)

    async def history(self, user_id: int, *, status: str | None, page: int,
                      page_size: int) -> tuple[list[OrderView], int]:
        if status is not None and status not in STATUSES:
            raise ValidationFailed.at("query.status", f"must be one of {', '.join(STATUSES)}")
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE user_id = $1"
                " AND ($2::text IS NULL OR status = $2)", user_id, status)
            rows = await conn.fetch(
                f"SELECT {ORDER_COLUMNS} FROM orders o WHERE o.user_id = $1"
                " AND ($2::text IS NULL OR o.status = $2)"
                " ORDER BY o.created_at DESC, o.order_id DESC LIMIT $3 OFFSET $4",
                user_id, status, page_size, (page - 1) * page_size)
            return await load_views(conn, list(rows)), total

    # -- the state machine ---------------------------------------------------------------
    async def transition(self, order_id: int, target: str) -> OrderView:
        """An operator's move: shipped or delivered."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                order = await lock_order(conn, order_id)
                current, method = order["status"], order["method"]
                rule = EDGES.get((current, target), "")
                if not rule.startswith("admin") or (rule == "admin:cod" and method != "cod"):
                    why = ("The order's payment is not captured yet." if
                           (current, target) == ("placed", "shipped") else None)
                    raise refuse(current, target, why)
                await record_move(conn, order, target)
                if target == "delivered" and method == "cod":  # cash collected at the door
                    await Payments.collected(conn, order_id=order_id)
            return await load_view(conn, order_id)

    async def cancel(self, order_id: int, *, user_id: int, is_admin: bool = False) -> OrderView:
        """Cancel before shipping: refund, restock (a flash unit goes back to its sale while
        the sale runs, else into regular stock), give the coupon back."""
        owner = await self._owner(order_id)
        if owner is None or not (is_admin or owner == user_id):
            raise NotFound("No such order.")
        items = await self._pool.fetch(
            "SELECT product_id, sale_id, quantity FROM order_items WHERE order_id = $1", order_id)
        sale_running = {}
        for sale_id in {i["sale_id"] for i in items if i["sale_id"] is not None}:
            try:
                sale_running[sale_id] = (await self._sales.view(sale_id)).status in RUNNING_SALE
            except NotFound:  # the sale's Redis state is gone: it is over
                sale_running[sale_id] = False

        async def cancel() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                order = await lock_order(conn, order_id)
                current = order["status"]
                if EDGES.get((current, "cancelled")) != "owner":
                    raise refuse(current, "cancelled",
                                 "Only an order that has not shipped can be cancelled.")
                if current == "placed" and order["method"] != "cod":
                    raise Conflict("The order's payment is still being processed; try again "
                                   "in a moment.")
                await record_move(conn, order, "cancelled")
                await self._give_back(conn, order, items, sale_running)

        await retrying(cancel)
        await self._tasks.run_for_order(order_id)
        return await load_view(self._pool, order_id)

    async def _give_back(self, conn: asyncpg.Connection, order: asyncpg.Record,
                         items: list[asyncpg.Record], sale_running: dict[int, bool]) -> None:
        order_id = order["order_id"]
        to_stock: dict[int, int] = {}
        for item in items:
            if item["sale_id"] is not None and sale_running[item["sale_id"]]:
                await tasks.add(conn, order_id, "release_unit", tasks.release_task(
                    reservation_id=order["reservation_id"], product_id=item["product_id"],
                    quantity=item["quantity"]))
            else:
                pid = item["product_id"]
                to_stock[pid] = to_stock.get(pid, 0) + item["quantity"]
        await tasks.restock_or_defer(conn, order_id, to_stock)
        if order["checkout_id"] is not None:
            await Coupons.release(conn, checkout_id=order["checkout_id"])
        if order["payment_status"] == "captured":
            left = order["amount"] - order["refunded_amount"]
            if left > 0:
                await tasks.add(conn, order_id, "refund", tasks.refund_task(
                    payment_id=order["payment_id"], amount=left,
                    reference=f"cancel:{order_id}", reason="order_cancelled"))
        elif order["payment_id"] is not None:
            await Payments.voided(conn, payment_id=order["payment_id"])

