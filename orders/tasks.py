"""Order tasks: side effects that an order change commits to but cannot make in its own
transaction.

Cancelling an order or accepting a return must refund money at the provider and may put
a flash-sale unit back on sale in Redis; neither can join the Postgres transaction that
changes the order. A flash unit going back into regular stock must also wait until the
reconciler has counted it sold (it moves ``sold_qty`` from the sale's stream). So that
transaction records the task (``add``), the caller runs it at once after the commit
(``run_for_order``), and ``run_due`` (the gateway's upkeep loop) retries whatever a
crash, an outage or a lagging reconciler left pending. Tasks are idempotent: the provider
call is keyed by a refund reference, the release script is idempotent, and each task's
Postgres effects commit together with marking it done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from engine.admission import Admission
from engine.errors import FlashsaleError, NotFound, as_unavailable
from engine.sql import Params
from orders import inventory, outbox
from orders.payments import Payments

log = logging.getLogger("flashsale.orders")

def _claim(arg: Params, *, limit: int, order_id: int | None = None) -> str:
    """Lock up to ``limit`` due tasks (of one order, or of all) for 60 seconds."""
    of_order = f" AND order_id = {arg(order_id)}" if order_id is not None else ""
    return ("UPDATE order_tasks SET locked_until = now() + interval '60 seconds',"
            " attempts = attempts + 1 WHERE task_id IN ("
            " SELECT task_id FROM order_tasks WHERE state = 'pending'"
            " AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())"
            f"{of_order} ORDER BY task_id LIMIT {arg(limit)} FOR UPDATE SKIP LOCKED)"
            " RETURNING task_id, order_id, kind, payload, attempts")


async def add(conn: asyncpg.Connection, order_id: int, kind: str, payload: dict[str, Any]) -> None:
    """Record a task inside the caller's transaction."""
    await conn.execute("INSERT INTO order_tasks (order_id, kind, payload) VALUES ($1, $2, $3)",
                       order_id, kind, payload)


def refund_task(*, payment_id: int, amount: Decimal, reference: str, reason: str
                ) -> dict[str, Any]:
    return {"payment_id": payment_id, "amount": str(amount), "reference": reference,
            "reason": reason}


def release_task(*, reservation_id: str, product_id: int, quantity: int) -> dict[str, Any]:
    return {"reservation_id": reservation_id, "product_id": product_id, "quantity": quantity}


class NotYetCounted(Exception):
    """The units are not counted sold yet (the reconciler lags): retry later."""


@dataclass(slots=True)
class TaskReport:
    done: int = 0
    failed: int = 0


async def restock_or_defer(conn: asyncpg.Connection, order_id: int,
                           units: dict[int, int]) -> None:
    """Put sold units back into regular stock in the caller's transaction; a unit whose
    sale the reconciler has not counted yet becomes a ``restock`` task instead."""
    for product_id in sorted(units):
        if not await inventory.put_back_counted(conn, product_id, units[product_id]):
            await add(conn, order_id, "restock",
                      {"product_id": product_id, "quantity": units[product_id]})


class OrderTasks:
    def __init__(self, *, pool: asyncpg.Pool, payments: Payments, admission: Admission) -> None:
        self._pool = pool
        self._payments = payments
        self._admission = admission

    async def run_for_order(self, order_id: int) -> TaskReport:
        arg = Params()
        return await self._run(_claim(arg, limit=100, order_id=order_id), arg)

    async def run_due(self, limit: int = 100) -> TaskReport:
        arg = Params()
        return await self._run(_claim(arg, limit=limit), arg)

    async def _run(self, claim: str, arg: Params) -> TaskReport:
        report = TaskReport()
        for task in await self._pool.fetch(claim, *arg.values):
            try:
                if task["kind"] == "refund":
                    await self._refund(task)
                elif task["kind"] == "release_unit":
                    await self._release_unit(task)
                else:
                    await self._restock(task)
                report.done += 1
            except Exception as exc:  # left pending: retried with backoff by run_due
                if as_unavailable(exc) is None and not isinstance(
                        exc, (FlashsaleError, NotYetCounted)):
                    log.exception("order task %s failed", task["task_id"])
                report.failed += 1
                await self._pool.execute(
                    "UPDATE order_tasks SET locked_until = NULL, last_error = $2,"
                    " next_attempt_at = now() + make_interval(secs => $3) WHERE task_id = $1",
                    task["task_id"], f"{type(exc).__name__}: {exc}"[:500],
                    min(600.0, 2.0 ** min(task["attempts"], 10)))
        return report

    async def _refund(self, task: asyncpg.Record) -> None:
        p = task["payload"]
        amount = Decimal(p["amount"])
        async with self._pool.acquire() as conn:
            payment = await self._payments.get(conn, p["payment_id"])
        await self._payments.refund(payment, reference=p["reference"], amount=amount)
        async with self._pool.acquire() as conn, conn.transaction():
            if await Payments.record_refund(conn, payment_id=payment.payment_id,
                                            reference=p["reference"], amount=amount,
                                            reason=p["reason"]):
                await conn.execute(
                    "INSERT INTO order_events (order_id, status, note) VALUES ($1, 'refunded', $2)",
                    task["order_id"], f"{amount} refunded ({p['reason']})")
                await outbox.enqueue(conn, "order.refunded", order_id=task["order_id"],
                                     user_id=payment.user_id,
                                     data={"amount": amount, "reason": p["reason"]})
            await self._done(conn, task["task_id"])

    async def _release_unit(self, task: asyncpg.Record) -> None:
        """A cancelled flash unit goes back on sale (the sale was running when the order
        was cancelled); if the sale's Redis state is gone meanwhile, into regular stock."""
        p = task["payload"]
        try:
            await self._admission.release(p["reservation_id"], user_id=None,
                                          include_confirmed=True, reason="order_cancelled")
        except NotFound:
            await self._restock(task)
            return
        async with self._pool.acquire() as conn:
            await self._done(conn, task["task_id"])

    async def _restock(self, task: asyncpg.Record) -> None:
        p = task["payload"]
        async with self._pool.acquire() as conn, conn.transaction():
            if not await inventory.put_back_counted(conn, p["product_id"], p["quantity"]):
                raise NotYetCounted(f"product {p['product_id']}: the reconciler has not "
                                    "counted these units sold yet")
            await self._done(conn, task["task_id"])

    @staticmethod
    async def _done(conn: asyncpg.Connection, task_id: int) -> None:
        await conn.execute(
            "UPDATE order_tasks SET state = 'done', done_at = now(), locked_until = NULL"
            " WHERE task_id = $1", task_id)
