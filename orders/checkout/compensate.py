"""Compensation: a checkout that failed for a business reason after its reserve step is
undone, each effect by its inverse, in reverse order:

    effect (step that did it)              inverse (here)
    order written (pay)                    order cancelled, tracking event
    payment captured (settle)              refunded at the provider
    payment authorized (pay)               voided at the provider
    hold confirmed (pay, confirm.lua)      released back to the sale
    coupon redeemed (reserve)              redemption given back
    cart stock taken (reserve)             put back (orders/inventory.py)

``begin`` records the step ``compensating`` with the response to give; ``unwind`` does
the undoing and ends the checkout with that response. Every part is idempotent, so an
unwind cut short by a crash or an outage is simply run again.
"""

from __future__ import annotations

import logging

import asyncpg

from engine import metrics
from engine.codec import error_body
from engine.errors import Conflict, FlashsaleError
from engine.sql import Params
from orders import inventory
from orders.checkout.state import Saga, Services
from orders.coupons import Coupons
from orders.idempotency import Step
from orders.payments import Payments
from orders.txn import retrying

log = logging.getLogger("flashsale.checkout")

_OUTCOME = ("SELECT c.response_status, c.response_body, p.status AS payment_status"
            " FROM checkouts c JOIN payments p ON p.payment_id = $2 WHERE c.checkout_id = $1")


async def begin(svc: Services, saga: Saga, exc: Exception) -> None:
    """Any step -> compensating, with the error the client will get."""
    record = saga.record
    if isinstance(exc, FlashsaleError):
        error = exc
    elif isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        error = Conflict("The order could not be recorded; the payment was reversed.",
                         details={"reason": "order_write_failed"})
    else:
        log.exception("checkout %s failed at step %s", record.checkout_id, record.step)
        error = Conflict("The checkout could not be completed; the payment was reversed.",
                         details={"reason": "checkout_failed"})
    metrics.ORDERS.labels(error.code).inc()
    async with svc.pool.acquire() as conn:
        await svc.store.advance(conn, record, Step.COMPENSATING, response_status=error.status,
                                response_body=error_body(error).decode())


async def unwind(svc: Services, saga: Saga) -> None:
    """compensating -> done: everything the saga did, undone (each part idempotent)."""
    record, plan = saga.record, saga.plan
    outcome = await svc.pool.fetchrow(_OUTCOME, record.checkout_id, plan.payment_id)
    declined = outcome["payment_status"] == "declined"
    reversal = "declined" if declined else await svc.payments.reverse(saga.payment)
    if plan.reservation_id is not None:
        await _return_hold(svc, saga, "payment_failed" if declined else "checkout_failed")

    async def undo() -> None:
        async with svc.pool.acquire() as conn, conn.transaction():
            if plan.reservation_id is None:
                await inventory.put_back(conn, plan.units())
            await Coupons.release(conn, checkout_id=record.checkout_id)
            arg = Params()
            payment = Payments.reversed_cte(arg, payment_id=plan.payment_id, status=reversal)
            await conn.execute(
                f"WITH {payment}, o AS (UPDATE orders SET status = 'cancelled',"
                f" updated_at = now() WHERE order_id = {arg(plan.order_id)}"
                " AND status IN ('placed', 'paid') RETURNING order_id)"
                " INSERT INTO order_events (order_id, status, note)"
                " SELECT order_id, 'cancelled', 'checkout failed' FROM o", *arg.values)
            await svc.store.finish(conn, record, status=outcome["response_status"],
                                   body=outcome["response_body"].encode())

    await retrying(undo)


async def _return_hold(svc: Services, saga: Saga, reason: str) -> None:
    """The inverse of the hold and of its confirmation: the unit goes back to the sale
    (only the caller's hold, and a confirmed one only for this checkout's order)."""
    reservation_id, user_id = saga.plan.reservation_id, saga.record.user_id
    hold = await svc.admission.get(reservation_id)
    if hold is None or hold.user_id != user_id:
        return
    if hold.status == "held":
        await svc.admission.release(reservation_id, user_id=user_id, reason=reason)
    elif hold.status == "confirmed" and hold.order_id == saga.plan.order_id:
        await svc.admission.release(reservation_id, user_id=user_id, include_confirmed=True,
                                    reason=reason)
