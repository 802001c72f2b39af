"""Returns: the owner asks within 30 days of delivery; an operator accepts (refund and
restock) or rejects.

The refund of a return is its share of what was paid for goods (pricing.refund_share:
discount and tax shared pro rata, shipping kept), fixed when the return is requested.
Accepting it puts the units back into regular stock and records a refund task, in one
transaction; when every unit of the order has come back the order becomes ``returned``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import msgspec

from engine.errors import InvalidTransition, NotFound, ValidationFailed
from orders import tasks
from orders.orders import lock_order, record_move
from orders.pricing import ZERO, line_subtotal, refund_share
from orders.tasks import OrderTasks
from orders.txn import retrying

RETURN_WINDOW = timedelta(days=30)


class ReturnItemView(msgspec.Struct):
    order_item_id: int
    quantity: int


class ReturnView(msgspec.Struct):
    return_id: int
    order_id: int
    status: str
    reason: str
    refund_amount: Decimal
    items: list[ReturnItemView]
    created_at: datetime
    decided_at: datetime | None


class Returns:
    def __init__(self, *, pool: asyncpg.Pool, tasks: OrderTasks) -> None:
        self._pool = pool
        self._tasks = tasks

    async def request(self, order_id: int, *, user_id: int, items: list[tuple[int, int]],
                      reason: str) -> ReturnView:
        ids = [item_id for item_id, _ in items]
        if len(set(ids)) != len(ids):
            raise ValidationFailed.at("$.items", "each order item may appear once")

        async def request() -> int:
            async with self._pool.acquire() as conn, conn.transaction():
                order = await lock_order(conn, order_id)
                if order["user_id"] != user_id:
                    raise NotFound("No such order.")
                if order["status"] != "delivered":
                    raise InvalidTransition("Only a delivered order can be returned.",
                                            details={"from": order["status"], "to": "returned"})
                delivered, now = await conn.fetchrow(
                    "SELECT max(at), now() FROM order_events"
                    " WHERE order_id = $1 AND status = 'delivered'", order_id)
                if now - delivered > RETURN_WINDOW:
                    raise InvalidTransition(
                        "The 30-day return window has closed.",
                        details={"window_closed_at": (delivered + RETURN_WINDOW).isoformat()})
                ordered, left = await self._returnable(conn, order_id)
                returned_subtotal = ZERO
                for n, (item_id, quantity) in enumerate(items):
                    if item_id not in ordered:
                        raise ValidationFailed.at(f"$.items[{n}].order_item_id",
                                                  "not an item of this order")
                    if quantity > left[item_id]:
                        raise ValidationFailed.at(f"$.items[{n}].quantity",
                                                  f"at most {left[item_id]} can be returned")
                    returned_subtotal += line_subtotal(ordered[item_id]["unit_price"], quantity)
                everything = all(left[i] == dict(items).get(i, 0) for i in ordered)
                already = await conn.fetchval(
                    "SELECT coalesce(sum(refund_amount), 0) FROM returns"
                    " WHERE order_id = $1 AND status <> 'rejected'", order_id)
                refund = refund_share(total=order["total"], shipping_fee=order["shipping_fee"],
                                      subtotal=order["subtotal"],
                                      returned_subtotal=returned_subtotal,
                                      already_refunded=already, everything_returned=everything)
                return_id = await conn.fetchval(
                    "INSERT INTO returns (order_id, user_id, reason, refund_amount)"
                    " VALUES ($1, $2, $3, $4) RETURNING return_id",
                    order_id, user_id, reason, refund)
                await conn.executemany(
                    "INSERT INTO return_items (return_id, order_item_id, quantity)"
                    " VALUES ($1, $2, $3)", [(return_id, i, q) for i, q in items])
                await conn.execute(
                    "INSERT INTO order_events (order_id, status, note)"
                    " VALUES ($1, 'return_requested', $2)", order_id, f"return {return_id}")
                return return_id

        return await self.get(await retrying(request))

    async def decide(self, return_id: int, status: str) -> ReturnView:
        """An operator's decision: ``refunded`` (goods received) or ``rejected``."""
        async def decide() -> int:
            async with self._pool.acquire() as conn, conn.transaction():
                ret = await conn.fetchrow(
                    "SELECT order_id, status, refund_amount FROM returns WHERE return_id = $1",
                    return_id)
                if ret is None:
                    raise NotFound("No such return.")
                order = await lock_order(conn, ret["order_id"])  # orders first, then returns
                current = await conn.fetchval(
                    "SELECT status FROM returns WHERE return_id = $1 FOR UPDATE", return_id)
                if current != "requested":
                    raise InvalidTransition(f"The return is already {current}.",
                                            details={"from": current, "to": status})
                await conn.execute(
                    "UPDATE returns SET status = $2, decided_at = now() WHERE return_id = $1",
                    return_id, status)
                if status == "rejected":
                    await conn.execute(
                        "INSERT INTO order_events (order_id, status, note)"
                        " VALUES ($1, 'return_rejected', $2)", order["order_id"],
                        f"return {return_id}")
                    return order["order_id"]
                await self._accept(conn, order, return_id, ret["refund_amount"])
                return order["order_id"]

        order_id = await retrying(decide)
        await self._tasks.run_for_order(order_id)
        return await self.get(return_id)

    async def _accept(self, conn: asyncpg.Connection, order: asyncpg.Record, return_id: int,
                      refund: Decimal) -> None:
        units = await conn.fetch(
            "SELECT oi.product_id, ri.quantity FROM return_items ri"
            " JOIN order_items oi USING (order_item_id) WHERE ri.return_id = $1", return_id)
        stock: dict[int, int] = {}
        for u in units:
            stock[u["product_id"]] = stock.get(u["product_id"], 0) + u["quantity"]
        await tasks.restock_or_defer(conn, order["order_id"], stock)
        if refund > 0 and order["payment_status"] in ("captured", "refunded"):
            await tasks.add(conn, order["order_id"], "refund", tasks.refund_task(
                payment_id=order["payment_id"], amount=refund, reference=f"return:{return_id}",
                reason="returned"))
        still_out = await conn.fetchval(
            "SELECT (SELECT sum(quantity) FROM order_items WHERE order_id = $1)"
            " - coalesce((SELECT sum(ri.quantity) FROM return_items ri JOIN returns r"
            " USING (return_id) WHERE r.order_id = $1 AND r.status = 'refunded'), 0)",
            order["order_id"])
        if still_out == 0:
            await record_move(conn, order, "returned", note=f"return {return_id}")
        else:
            await conn.execute(
                "INSERT INTO order_events (order_id, status, note)"
                " VALUES ($1, 'return_accepted', $2)", order["order_id"], f"return {return_id}")

    async def _returnable(self, conn: asyncpg.Connection, order_id: int
                          ) -> tuple[dict[int, asyncpg.Record], dict[int, int]]:
        ordered = {r["order_item_id"]: r for r in await conn.fetch(
            "SELECT order_item_id, quantity, unit_price FROM order_items WHERE order_id = $1",
            order_id)}
        taken = dict(await conn.fetch(
            "SELECT ri.order_item_id, sum(ri.quantity)::int FROM return_items ri"
            " JOIN returns r USING (return_id) WHERE r.order_id = $1 AND r.status <> 'rejected'"
            " GROUP BY ri.order_item_id", order_id))
        return ordered, {i: r["quantity"] - taken.get(i, 0) for i, r in ordered.items()}

    async def get(self, return_id: int, *, user_id: int | None = None) -> ReturnView:
        row = await self._pool.fetchrow(
            "SELECT return_id, order_id, user_id, status, reason, refund_amount, created_at,"
            " decided_at FROM returns WHERE return_id = $1", return_id)
        if row is None or (user_id is not None and row["user_id"] != user_id):
            raise NotFound("No such return.")
        items = await self._pool.fetch(
            "SELECT order_item_id, quantity FROM return_items WHERE return_id = $1"
            " ORDER BY order_item_id", return_id)
        return ReturnView(return_id=row["return_id"], order_id=row["order_id"],
                          status=row["status"], reason=row["reason"],
                          refund_amount=row["refund_amount"],
                          items=[ReturnItemView(**dict(i)) for i in items],
                          created_at=row["created_at"], decided_at=row["decided_at"])

    async def for_order(self, order_id: int, *, user_id: int, is_admin: bool) -> list[ReturnView]:
        owner = await self._pool.fetchval("SELECT user_id FROM orders WHERE order_id = $1",
                                          order_id)
        if owner is None or not (is_admin or owner == user_id):
            raise NotFound("No such order.")
        ids = await self._pool.fetch(
            "SELECT return_id FROM returns WHERE order_id = $1 ORDER BY return_id", order_id)
        return [await self.get(r["return_id"]) for r in ids]
