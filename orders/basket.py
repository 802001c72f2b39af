"""What a checkout buys: the lines of a cart or of a flash-sale hold, priced from the
source of truth, and the stock they take."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import msgspec

from engine.admission import Admission
from engine.errors import (
    CartEmpty,
    Conflict,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    ReservationExpired,
    ValidationFailed,
)
from engine.sales import Sales
from orders.cart import Carts
from orders.pricing import line_subtotal


class PlanLine(msgspec.Struct, frozen=True):
    product_id: int
    name: str
    quantity: int
    unit_price: Decimal
    subtotal: Decimal
    sale_id: int | None = None


async def cart_lines(conn: asyncpg.Connection, carts: Carts, user_id: int
                     ) -> tuple[list[PlanLine], str]:
    """The cart's lines priced from Postgres: a price that changed since the shopper saw
    it, or stock that ran short, is reported, never charged."""
    cart = await carts.lines(user_id)
    if not cart:
        raise CartEmpty(details=[{"path": "$", "message": "the cart is empty"}])
    rows = await conn.fetch(
        "SELECT p.product_id, p.name, p.price, p.currency, p.status,"
        " coalesce((SELECT i.available_qty FROM inventory i"
        " WHERE i.product_id = p.product_id), 0) AS available_qty"
        " FROM products p WHERE p.product_id = ANY($1::bigint[])",
        list(cart))
    found = {r["product_id"]: r for r in rows}
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
        await carts.reprice(user_id, {c["product_id"]: c["current_price"] for c in changed})
        raise Conflict("Prices changed since these items went into the cart; the cart now "
                       "shows the current prices. Review it and place the order again.",
                       details={"price_changes": msgspec.to_builtins(changed)})
    if short:
        raise InsufficientStock("Some items are no longer available in that quantity.",
                                details={"items": short})
    currencies = {found[pid]["currency"] for pid in cart}
    if len(currencies) > 1:
        raise ValidationFailed.at("$", "the cart mixes currencies; order them separately")
    lines = [PlanLine(product_id=pid, name=found[pid]["name"], quantity=line.q,
                      unit_price=line.p, subtotal=line_subtotal(line.p, line.q))
             for pid, line in sorted(cart.items())]
    return lines, currencies.pop()


async def flash_lines(conn: asyncpg.Connection, admission: Admission, sales: Sales,
                      user_id: int, reservation_id: str) -> tuple[list[PlanLine], str]:
    """The hold's one line at the sale's price: the hold must be live and the caller's."""
    hold = await admission.get(reservation_id)
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
    sale = await sales.view(hold.sale_id)
    product = await conn.fetchrow(
        "SELECT name, currency FROM products WHERE product_id = $1", sale.product_id)
    line = PlanLine(product_id=sale.product_id, name=product["name"],
                    quantity=hold.quantity, unit_price=sale.price,
                    subtotal=line_subtotal(sale.price, hold.quantity), sale_id=hold.sale_id)
    return [line], product["currency"]


async def take_stock(conn: asyncpg.Connection, lines: list[PlanLine]) -> None:
    """Conditional decrements, all or nothing, rows locked in product-id order."""
    pids = [line.product_id for line in lines]  # sorted: one line per product
    if len(pids) > 1:
        await conn.execute("SELECT 1 FROM inventory WHERE product_id = ANY($1::bigint[])"
                           " ORDER BY product_id FOR UPDATE", pids)
    taken = await conn.fetch(
        "UPDATE inventory i SET available_qty = i.available_qty - l.q,"
        " sold_qty = i.sold_qty + l.q, version = i.version + 1, updated_at = now()"
        " FROM unnest($1::bigint[], $2::int[]) AS l(pid, q)"
        # product_id = ANY: an index condition, so no plan ever scans the whole table
        " WHERE i.product_id = ANY($1::bigint[]) AND i.product_id = l.pid"
        " AND i.available_qty >= l.q RETURNING i.product_id",
        pids, [line.quantity for line in lines])
    if len(taken) == len(pids):
        return
    missing = sorted(set(pids) - {r["product_id"] for r in taken})
    have = dict(await conn.fetch(
        "SELECT product_id, available_qty FROM inventory WHERE product_id = ANY($1::bigint[])",
        missing))
    wanted = {line.product_id: line.quantity for line in lines}
    raise InsufficientStock("Some items are no longer available in that quantity.",
                            details={"items": [{"product_id": pid, "requested": wanted[pid],
                                                "available_qty": have.get(pid, 0)}
                                               for pid in missing]})
