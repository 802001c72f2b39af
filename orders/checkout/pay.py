"""The pay steps: authorize, confirm the hold, write the order; then capture and settle.

Each step ends in one statement that also records the step (``FROM c``: nothing is
written unless this executor still holds the checkout), so a crash between two steps
leaves a recorded step to resume from, and a second executor can never write twice.
Provider calls are keyed by the payment reference and ``confirm.lua`` by the order id,
so running a step again after a crash repeats nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import msgspec

from engine import metrics
from engine.codec import encode
from engine.sql import Params
from orders import outbox
from orders.checkout import cart_cleanup
from orders.checkout.state import Plan, Saga, Services
from orders.idempotency import LeaseLost, Step
from orders.payments import Payments
from orders.pricing import ZERO
from orders.views import OrderEventView, OrderItemView, OrderView, PaymentView, load_view

_CARD_TOKEN = ("SELECT provider_token FROM payment_methods WHERE payment_method_id = $1"
               " AND user_id = $2")


async def authorize_and_order(svc: Services, saga: Saga) -> None:
    """reserved -> ordered: authorize, confirm the hold, write the order (cash on
    delivery: -> done, nothing to capture)."""
    record, plan = saga.record, saga.plan
    token = saga.token
    if token is None and plan.method == "card":  # resumed: the token was not kept
        token = await svc.pool.fetchval(_CARD_TOKEN, plan.payment_method_id, record.user_id)
    await svc.payments.authorize(saga.payment, token)
    await svc.at("after_authorize", record)
    if plan.reservation_id is not None:
        await svc.admission.confirm(plan.reservation_id, user_id=record.user_id,
                                    order_id=plan.order_id)
        await svc.at("after_confirm", record)
    if plan.method == "cod":  # paid on delivery: the order is placed, and that is the end
        async with svc.pool.acquire() as conn, conn.transaction():
            saga.view = await _write_order(svc, conn, saga)
            await outbox.enqueue(conn, "order.confirmed", order_id=plan.order_id,
                                 user_id=record.user_id, data=_notice(plan, saga.view.status))
            await svc.store.finish(conn, record, status=201, body=encode(saga.view),
                                   cart_pending=saga.from_cart)
        metrics.ORDERS.labels(saga.view.status).inc()
    else:
        async with svc.pool.acquire() as conn:  # one statement: atomic on its own
            saga.view = await _write_order(svc, conn, saga)
    await svc.at("after_order", record)
    if record.step == Step.DONE:
        await cart_cleanup.after_order_placed(svc, saga)


async def capture_and_settle(svc: Services, saga: Saga) -> None:
    """ordered -> done: capture, take the units out of the cart, then one statement:
    the order paid, its tracking event, the payment captured, the notification, the
    response stored."""
    record, plan = saga.record, saga.plan
    await svc.payments.capture(saga.payment)
    await svc.at("after_capture", record)
    # Paid: the units leave the cart now (idempotent), so that the settle statement
    # records the cart as done and no extra write is needed.
    cart_pending = saga.from_cart and await cart_cleanup.empty_cart(svc, saga)
    await svc.at("after_cart", record)
    placed = saga.view or await load_view(svc.pool, plan.order_id)  # resumed: read it
    at = datetime.now(UTC)
    paid = msgspec.structs.replace(
        placed, status="paid", updated_at=at,
        events=[*placed.events, OrderEventView(status="paid", at=at)],
        payment=msgspec.structs.replace(placed.payment, status="captured"))
    body = encode(paid)
    arg = Params()
    done = svc.store.finish_cte(record, arg, status=201, body=body, cart_pending=cart_pending)
    notify = outbox.enqueue_cte("order.confirmed", arg, order_id=plan.order_id,
                                user_id=record.user_id, data=_notice(plan, "paid"), after="c")
    captured = Payments.status_cte(arg, payment_id=plan.payment_id, status="captured", at=at,
                                   after="c")
    async with svc.pool.acquire() as conn:
        settled = await conn.fetchval(
            f"WITH {done}, {notify}, {captured},"
            f" o AS (UPDATE orders SET status = 'paid', updated_at = {arg(at)}"
            f" WHERE order_id = {arg(plan.order_id)} AND status = 'placed'"
            " AND EXISTS (SELECT 1 FROM c) RETURNING order_id),"
            f" e AS (INSERT INTO order_events (order_id, status, at)"
            f" SELECT order_id, 'paid', {arg(at)} FROM o)"
            " SELECT count(*) FROM c", *arg.values)
    if not settled:
        raise LeaseLost()
    svc.store.committed_finish(record, 201, body)
    metrics.ORDERS.labels("paid").inc()


def _notice(plan: Plan, status: str) -> dict:
    return {"status": status, "total": plan.total, "items": len(plan.lines)}


async def _write_order(svc: Services, conn: asyncpg.Connection, saga: Saga) -> OrderView:
    """One statement: the step recorded, the order, its items, the first tracking event,
    the payment authorized (cash on delivery: pending); returns the order as written,
    without reading it back."""
    record, plan = saga.record, saga.plan
    at = datetime.now(UTC)
    payment_status = "pending" if plan.method == "cod" else "authorized"
    lines = plan.lines
    arg = Params()
    advance = svc.store.advance_cte(record, Step.ORDERED, arg)
    payment = Payments.status_cte(arg, payment_id=plan.payment_id, status=payment_status,
                                  at=at, after="c")
    # Nothing is written unless we still hold the checkout (FROM c).
    written = await conn.fetch(
        f"WITH {advance}, {payment},"
        " o AS (INSERT INTO orders (order_id, user_id, idempotency_key, status, subtotal,"
        " discount, tax, shipping_fee, total, currency, shipping_address_id,"
        " payment_method_id, coupon_code, reservation_id, created_at, updated_at)"
        f" SELECT {arg(plan.order_id)}, {arg(record.user_id)},"
        f" {arg(record.request.idempotency_key)}, 'placed', {arg(plan.subtotal)},"
        f" {arg(plan.discount)}, {arg(plan.tax)}, {arg(plan.shipping_fee)},"
        f" {arg(plan.total)}, {arg(plan.currency)}, {arg(plan.shipping_address_id)},"
        f" {arg(plan.payment_method_id)}, {arg(plan.coupon_code)},"
        f" {arg(plan.reservation_id)}, {arg(at)}, {arg(at)} FROM c RETURNING order_id),"
        " e AS (INSERT INTO order_events (order_id, status, at)"
        f" SELECT order_id, 'placed', {arg(at)} FROM o)"
        " INSERT INTO order_items (order_id, product_id, sale_id, quantity, unit_price,"
        " subtotal) SELECT (SELECT order_id FROM o), * FROM unnest("
        f"{arg([ln.product_id for ln in lines], '::bigint[]')},"
        f" {arg([ln.sale_id for ln in lines], '::bigint[]')},"
        f" {arg([ln.quantity for ln in lines], '::int[]')},"
        f" {arg([ln.unit_price for ln in lines], '::numeric[]')},"
        f" {arg([ln.subtotal for ln in lines], '::numeric[]')})"
        " WHERE EXISTS (SELECT 1 FROM o) RETURNING order_item_id, product_id", *arg.values)
    if not written:
        raise LeaseLost()
    svc.store.committed_step(record, Step.ORDERED)
    item_of = {r["product_id"]: r["order_item_id"] for r in written}
    items = sorted((OrderItemView(order_item_id=item_of[ln.product_id],
                                  product_id=ln.product_id, name=ln.name,
                                  quantity=ln.quantity, unit_price=ln.unit_price,
                                  subtotal=ln.subtotal, sale_id=ln.sale_id)
                    for ln in lines), key=lambda item: item.order_item_id)
    return OrderView(
        order_id=plan.order_id, status="placed", subtotal=plan.subtotal,
        discount=plan.discount, tax=plan.tax, shipping_fee=plan.shipping_fee,
        total=plan.total, currency=plan.currency, items=items,
        events=[OrderEventView(status="placed", at=at)],
        payment=PaymentView(method=plan.method, status=payment_status, amount=plan.total,
                            refunded_amount=ZERO),
        shipping_address_id=plan.shipping_address_id,
        payment_method_id=plan.payment_method_id, coupon_code=plan.coupon_code,
        reservation_id=plan.reservation_id, created_at=at, updated_at=at)
