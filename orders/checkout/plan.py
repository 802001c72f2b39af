"""The reserve step: validate, price, and take what the order needs, in the claim's
transaction (a failure rolls it all back, the idempotency key included).

A cart's lines are priced from Postgres (a price that changed since the shopper saw it,
or stock that ran short, is reported, never charged) and their stock is taken with
conditional updates; a flash-sale hold's one line is priced at the sale's price (the hold
itself was taken by admission and is confirmed by the pay step). The coupon is redeemed
and the order and payment ids allocated here, so the plan stored with the step is all a
later step, or another process resuming it, needs.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import msgspec

from engine.errors import (
    CartEmpty,
    Conflict,
    InvalidTransition,
    NotFound,
    ReservationExpired,
    ValidationFailed,
)
from orders import inventory
from orders.checkout.state import Plan, PlanLine, Saga, Services
from orders.coupons import Coupons
from orders.idempotency import Record, Step
from orders.pricing import line_subtotal, quote

_PAYER = (
    "SELECT a.address_id, pm.type, pm.provider_token FROM (VALUES (1)) AS one"
    " LEFT JOIN addresses a ON a.address_id = $2 AND a.user_id = $1"
    " LEFT JOIN payment_methods pm ON pm.payment_method_id = $3 AND pm.user_id = $1")
_CART_PRICES = (
    "SELECT p.product_id, p.name, p.price, p.currency, p.status,"
    " coalesce((SELECT i.available_qty FROM inventory i"
    " WHERE i.product_id = p.product_id), 0) AS available_qty"
    " FROM products p WHERE p.product_id = ANY($1::bigint[])")


async def reserve(svc: Services, conn: asyncpg.Connection, record: Record) -> Saga:
    """started -> reserved: validate and price, take the stock, redeem the coupon,
    allocate the order and payment; returns the saga with the card's provider token."""
    request, user_id = record.request, record.user_id
    payer = await _payer(conn, user_id, request.shipping_address_id, request.payment_method_id)
    if request.reservation_id is not None:
        lines, currency = await _flash_lines(svc, conn, user_id, request.reservation_id)
    else:
        lines, currency = await _cart_lines(svc, conn, user_id)

    coupon = None
    subtotal = sum((line.subtotal for line in lines), Decimal(0))
    if request.coupon_code is not None:
        coupon = await Coupons.applicable(conn, request.coupon_code,
                                          user_id=user_id, subtotal=subtotal)
    priced = quote([line.subtotal for line in lines], svc.rules,
                   coupon.discount if coupon else None)
    if request.reservation_id is None:
        await inventory.take(conn, {line.product_id: line.quantity for line in lines})
    order_id, payment_id = await svc.payments.open(
        conn, checkout_id=record.checkout_id, user_id=user_id,
        payment_method_id=request.payment_method_id, method=payer["type"],
        amount=priced.total)
    if coupon is not None:
        await Coupons.redeem(conn, coupon_id=coupon.coupon_id, user_id=user_id,
                             checkout_id=record.checkout_id, order_id=order_id,
                             discount=priced.discount)
    plan = Plan(order_id=order_id, payment_id=payment_id, method=payer["type"], lines=lines,
                subtotal=priced.subtotal, discount=priced.discount, tax=priced.tax,
                shipping_fee=priced.shipping_fee, total=priced.total, currency=currency,
                shipping_address_id=request.shipping_address_id,
                payment_method_id=request.payment_method_id,
                coupon_code=coupon.code if coupon else None,
                reservation_id=request.reservation_id)
    await svc.store.advance(conn, record, Step.RESERVED, order_id=order_id,
                            payment_id=payment_id, plan=msgspec.to_builtins(plan))
    return Saga(record, plan, token=payer["provider_token"])


async def _payer(conn: asyncpg.Connection, user_id: int, address_id: int,
                 payment_method_id: int) -> asyncpg.Record:
    """The caller's address and payment method, scoped by owner: another user's is
    indistinguishable from a missing one."""
    row = await conn.fetchrow(_PAYER, user_id, address_id, payment_method_id)
    if row["address_id"] is None:
        raise NotFound("No such address.")
    if row["type"] is None:
        raise NotFound("No such payment method.")
    return row


async def _cart_lines(svc: Services, conn: asyncpg.Connection, user_id: int
                      ) -> tuple[list[PlanLine], str]:
    """The cart's lines priced from Postgres: a price that changed since the shopper saw
    it, or stock that ran short, is reported, never charged."""
    cart = await svc.carts.lines(user_id)
    if not cart:
        raise CartEmpty(details=[{"path": "$", "message": "the cart is empty"}])
    found = {r["product_id"]: r for r in await conn.fetch(_CART_PRICES, list(cart))}
    changed, short = [], []
    for pid, line in sorted(cart.items()):
        row = found.get(pid)
        if row is None or row["status"] != "active":
            short.append({"product_id": pid, "requested": line.q, "available_qty": 0})
        elif row["price"] != line.p:
            changed.append({"product_id": pid, "cart_price": line.p,
                            "current_price": row["price"]})
        elif row["available_qty"] < line.q:
            short.append({"product_id": pid, "requested": line.q,
                          "available_qty": row["available_qty"]})
    if changed:
        await svc.carts.reprice(user_id, {c["product_id"]: c["current_price"] for c in changed})
        raise Conflict("Prices changed since these items went into the cart; the cart now "
                       "shows the current prices. Review it and place the order again.",
                       details={"price_changes": msgspec.to_builtins(changed)})
    if short:
        raise inventory.short(short)
    currencies = {found[pid]["currency"] for pid in cart}
    if len(currencies) > 1:
        raise ValidationFailed.at("$", "the cart mixes currencies; order them separately")
    lines = [PlanLine(product_id=pid, name=found[pid]["name"], quantity=line.q,
                      unit_price=line.p, subtotal=line_subtotal(line.p, line.q))
             for pid, line in sorted(cart.items())]
    return lines, currencies.pop()


async def _flash_lines(svc: Services, conn: asyncpg.Connection, user_id: int,
                       reservation_id: str) -> tuple[list[PlanLine], str]:
    """The hold's one line at the sale's price: the hold must be live and the caller's."""
    hold = await svc.admission.get(reservation_id)
    if hold is None or hold.user_id != user_id:
        raise NotFound("No such reservation.")
    if hold.status == "expired":
        raise ReservationExpired(details={"reservation_id": reservation_id})
    if hold.status == "released":
        raise InvalidTransition("The reservation was released.",
                                details={"reservation_id": reservation_id})
    if hold.status == "confirmed":
        raise Conflict("The reservation is already paid for.",
                       details={"reservation_id": reservation_id, "order_id": hold.order_id})
    sale = await svc.sales.view(hold.sale_id)
    product = await conn.fetchrow(
        "SELECT name, currency FROM products WHERE product_id = $1", sale.product_id)
    line = PlanLine(product_id=sale.product_id, name=product["name"],
                    quantity=hold.quantity, unit_price=sale.price,
                    subtotal=line_subtotal(sale.price, hold.quantity), sale_id=hold.sale_id)
    return [line], product["currency"]
