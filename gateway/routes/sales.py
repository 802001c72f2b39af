"""Flash-sale endpoints. The reservation path touches Redis only."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from engine.errors import NotFound
from gateway.api import Body, Reply, RouteTable, path_int, principal
from gateway.context import services

routes = RouteTable("sales")

SaleStatus = Literal["scheduled", "active", "sold_out", "ended"]
ReservationStatus = Literal["held", "confirmed", "released", "expired"]


class NewSale(Body):
    product_id: Annotated[int, Meta(ge=1)]
    quantity: Annotated[int, Meta(ge=1, le=10_000_000)]
    price: Decimal
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    per_user_limit: Annotated[int, Meta(ge=1, le=1000)] = 1
    hold_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600


class Sale(msgspec.Struct):
    sale_id: int
    product_id: int
    quantity: int
    price: Decimal
    starts_at: datetime
    ends_at: datetime | None
    per_user_limit: int
    hold_seconds: int
    status: SaleStatus


class SalePublic(msgspec.Struct):
    sale_id: int
    product_id: int
    price: Decimal
    remaining: int
    status: SaleStatus
    starts_at: datetime | None
    ends_at: datetime | None
    per_user_limit: int


class ReserveRequest(Body):
    quantity: Annotated[int, Meta(ge=1, le=1000)]
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=100)]


class Reservation(msgspec.Struct):
    reservation_id: str
    sale_id: int
    quantity: int
    status: ReservationStatus
    expires_at: datetime
    order_id: int | None = None


@routes.post("/api/v1/admin/sales", auth="admin", body=NewSale, response=Sale, status=201,
             errors=(422,))
async def create_sale(request: web.Request, body: NewSale) -> Sale:
    """Create a flash sale: move its units out of stock and load its tokens (admin)."""
    svc = services(request)
    row = await svc.sales.create(
        product_id=body.product_id, quantity=body.quantity, price=body.price,
        starts_at=body.starts_at, ends_at=body.ends_at, per_user_limit=body.per_user_limit,
        hold_seconds=body.hold_seconds)
    view = await svc.sales.view(row["sale_id"])
    return Sale(sale_id=row["sale_id"], product_id=row["product_id"], quantity=row["quantity"],
                price=row["price"], starts_at=row["starts_at"], ends_at=row["ends_at"],
                per_user_limit=row["per_user_limit"], hold_seconds=row["hold_seconds"],
                status=view.status)


@routes.get("/api/v1/sales/{sale_id}", auth="public", response=SalePublic)
async def get_sale(request: web.Request) -> SalePublic:
    """A sale's price, units remaining and status."""
    view = await services(request).sales.view(path_int(request, "sale_id"))
    return SalePublic(sale_id=view.sale_id, product_id=view.product_id, price=view.price,
                      remaining=view.remaining, status=view.status, starts_at=view.starts_at,
                      ends_at=view.ends_at, per_user_limit=view.per_user_limit)


@routes.post("/api/v1/sales/{sale_id}/reservations", body=ReserveRequest, response=Reservation,
             status=201, errors=(409, 422, 429))
async def reserve(request: web.Request, body: ReserveRequest) -> Reservation | Reply:
    """Hold units of a flash sale. The same idempotency key again returns the same hold."""
    admission = services(request).admission
    hold = await admission.reserve(
        path_int(request, "sale_id"), principal(request).user_id, body.quantity,
        body.idempotency_key,
        client=(request.remote or "") if admission.rate_limit else "")
    reservation = Reservation(reservation_id=hold.reservation_id, sale_id=hold.sale_id,
                              quantity=hold.quantity, status=hold.status,
                              expires_at=hold.expires_at)
    return Reply(reservation, 200) if hold.replayed else reservation


async def _owned_reservation(request: web.Request) -> Reservation:
    svc = services(request)
    who = principal(request)
    reservation_id = request.match_info["reservation_id"]
    hold = await svc.admission.get(reservation_id)
    if hold is not None:
        owner = hold.user_id
        found = Reservation(reservation_id=hold.reservation_id, sale_id=hold.sale_id,
                            quantity=hold.quantity, status=hold.status,
                            expires_at=hold.expires_at, order_id=hold.order_id)
    else:  # the sale's Redis state is gone: Postgres remembers
        row = await svc.pool.fetchrow(
            "SELECT reservation_id, sale_id, user_id, quantity, status, expires_at, order_id"
            " FROM sale_reservations WHERE reservation_id = $1", reservation_id)
        if row is None:
            raise NotFound("No such reservation.")
        owner = row["user_id"]
        found = Reservation(reservation_id=row["reservation_id"], sale_id=row["sale_id"],
                            quantity=row["quantity"], status=row["status"],
                            expires_at=row["expires_at"], order_id=row["order_id"])
    if owner != who.user_id and not who.is_admin:
        raise NotFound("No such reservation.")
    return found


@routes.get("/api/v1/reservations/{reservation_id}", response=Reservation)
async def get_reservation(request: web.Request) -> Reservation:
    """One of your reservations."""
    return await _owned_reservation(request)


@routes.delete("/api/v1/reservations/{reservation_id}", response=Reservation, errors=(409,))
async def release_reservation(request: web.Request) -> Reservation:
    """Release a hold: its units go back on sale at once."""
    found = await _owned_reservation(request)
    hold = await services(request).admission.release(
        found.reservation_id, user_id=None if principal(request).is_admin else
        principal(request).user_id)
    return Reservation(reservation_id=found.reservation_id, sale_id=found.sale_id,
                       quantity=found.quantity, status=hold.status,
                       expires_at=found.expires_at, order_id=found.order_id)
