"""Flash-sale endpoints. Reserving touches Redis only (admission's Lua gate); reading a
reservation falls back to Postgres once the sale's Redis state is gone."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from engine.errors import NotFound, ValidationFailed
from engine.keys import MAX_BUCKETS
from engine.sale_records import room_of
from engine.waiting_room import RoomConfig
from gateway.api import PRINCIPAL, Body, Reply, RouteTable, path_int, principal
from gateway.context import services
from gateway.policy import Price
from reconciler.board import BoardStatus, SaleBoard, sale_board, sale_boards

routes = RouteTable("sales")

SaleStatus = Literal["scheduled", "active", "paused", "sold_out", "ended"]
ReservationStatus = Literal["held", "confirmed", "released", "expired"]


class NewSale(Body):
    product_id: Annotated[int, Meta(ge=1)]
    quantity: Annotated[int, Meta(ge=1, le=10_000_000)]
    price: Price
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    per_user_limit: Annotated[int, Meta(ge=1, le=1000)] = 1
    hold_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 600
    # Split the tokens over this many Redis buckets (slots), for a hot product on a
    # cluster (engine/buckets.py); at most the quantity.
    buckets: Annotated[int, Meta(ge=1, le=MAX_BUCKETS)] = 1
    # A stock-aware waiting room (engine/waiting_room.py) and its tuning.
    waiting_room: bool = False
    admission_rate: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    pass_seconds: Annotated[int, Meta(ge=10, le=3600)] | None = None
    pass_margin_percent: Annotated[int, Meta(ge=0, le=1000)] | None = None
    # false: a rate-only room that knows nothing of the stock (for comparisons)
    stock_aware: bool | None = None

    def room(self) -> RoomConfig | None:
        tuning = {"admission_rate": self.admission_rate, "pass_seconds": self.pass_seconds,
                  "pass_margin_percent": self.pass_margin_percent,
                  "stock_aware": self.stock_aware}
        given = {k: v for k, v in tuning.items() if v is not None}
        if not self.waiting_room:
            if given:
                name = next(iter(given))
                raise ValidationFailed.at(f"$.{name}", "applies only with waiting_room: true")
            return None
        return RoomConfig(**given)


class WaitingRoomSettings(msgspec.Struct):
    admission_rate: int
    pass_seconds: int
    pass_margin_percent: int
    stock_aware: bool


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
    waiting_room: WaitingRoomSettings | None = None
    buckets: int = 1


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
    # Required on a sale with a waiting room: the pass GET /sales/{id}/queue gave.
    queue_pass: Annotated[str, Meta(max_length=200)] | None = None


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
        hold_seconds=body.hold_seconds, waiting_room=body.room(), buckets=body.buckets)
    view = await svc.sales.view(row["sale_id"])
    room = room_of(row)
    return Sale(sale_id=row["sale_id"], product_id=row["product_id"], quantity=row["quantity"],
                price=row["price"], starts_at=row["starts_at"], ends_at=row["ends_at"],
                per_user_limit=row["per_user_limit"], hold_seconds=row["hold_seconds"],
                status=view.status, buckets=row["buckets"],
                waiting_room=None if room is None else WaitingRoomSettings(
                    admission_rate=room.admission_rate, pass_seconds=room.pass_seconds,
                    pass_margin_percent=room.pass_margin_percent,
                    stock_aware=room.stock_aware))


@routes.get("/api/v1/sales/{sale_id}", auth="public", response=SalePublic)
async def get_sale(request: web.Request) -> SalePublic:
    """A sale's price, units remaining and status."""
    sales = services(request).sales
    sale_id = path_int(request, "sale_id")
    try:
        view = await sales.view(sale_id)
    except NotFound:
        raise await sales.missing_from_redis(sale_id) from None
    return SalePublic(sale_id=view.sale_id, product_id=view.product_id, price=view.price,
                      remaining=view.remaining, status=view.status, starts_at=view.starts_at,
                      ends_at=view.ends_at, per_user_limit=view.per_user_limit)


@routes.post("/api/v1/sales/{sale_id}/reservations", auth="owner", also=(200,),
             body=ReserveRequest, response=Reservation,
             status=201, errors=(403, 409, 422, 429), hot=True)
async def reserve(request: web.Request, body: ReserveRequest) -> Reservation | Reply:
    """Hold units of a flash sale. The same idempotency key again returns the same hold.
    A sale with a waiting room needs the caller's live queue pass (403 queue_required)."""
    svc = services(request)
    admission, room = svc.admission, svc.room
    sale_id, user_id = path_int(request, "sale_id"), request[PRINCIPAL].user_id
    known, config = room.cached(sale_id)
    in_line = not known or config is not None  # a sale known to have no room skips both
    if in_line:
        await room.check_pass(sale_id, user_id, body.queue_pass)
    try:
        hold = await admission.reserve(
            sale_id, user_id, body.quantity, body.idempotency_key,
            client=(request.remote or "") if admission.rate_limit else "")
    except NotFound:
        raise await svc.sales.missing_from_redis(sale_id) from None
    if not hold.replayed and in_line:
        await room.pass_used(sale_id, user_id)
    reservation = Reservation(reservation_id=hold.reservation_id, sale_id=hold.sale_id,
                              quantity=hold.quantity, status=hold.status,
                              expires_at=hold.expires_at)
    return Reply(reservation, 200) if hold.replayed else reservation


async def _find_reservation(request: web.Request, *, staff: bool) -> Reservation:
    """The reservation of the path: the caller's own, or any (``staff``: admin routes);
    another user's is indistinguishable from a missing one."""
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
    if owner != who.user_id and not staff:
        raise NotFound("No such reservation.")
    return found


async def _release(request: web.Request, *, staff: bool) -> Reservation:
    found = await _find_reservation(request, staff=staff)
    hold = await services(request).admission.release(
        found.reservation_id, user_id=None if staff else principal(request).user_id)
    return Reservation(reservation_id=found.reservation_id, sale_id=found.sale_id,
                       quantity=found.quantity, status=hold.status,
                       expires_at=found.expires_at, order_id=found.order_id)


@routes.get("/api/v1/reservations/{reservation_id}", auth="owner", response=Reservation)
async def get_reservation(request: web.Request) -> Reservation:
    """One of your reservations."""
    return await _find_reservation(request, staff=False)


@routes.delete("/api/v1/reservations/{reservation_id}", auth="owner",
               response=Reservation, errors=(409,))
async def release_reservation(request: web.Request) -> Reservation:
    """Release a hold: its units go back on sale at once."""
    return await _release(request, staff=False)


@routes.get("/api/v1/admin/reservations/{reservation_id}", auth="admin", response=Reservation)
async def admin_get_reservation(request: web.Request) -> Reservation:
    """Any user's reservation (admin support)."""
    return await _find_reservation(request, staff=True)


@routes.delete("/api/v1/admin/reservations/{reservation_id}", auth="admin",
               response=Reservation, errors=(409,))
async def admin_release_reservation(request: web.Request) -> Reservation:
    """Release any user's hold (admin support): its units go back on sale at once."""
    return await _release(request, staff=True)


# -- operating sales (admin) --------------------------------------------------------------
class SaleBoards(msgspec.Struct):
    items: list[SaleBoard]


class SalesQuery(msgspec.Struct, forbid_unknown_fields=True):
    status: BoardStatus | None = None
    limit: Annotated[int, Meta(ge=1, le=1000, description="The newest this many sales are "
                                                          "looked at.")] = 500


async def _board(request: web.Request, sale_id: int) -> SaleBoard:
    board = await sale_board(services(request).sales, sale_id)
    if board is None:
        raise NotFound(f"No sale {sale_id}.")
    return board


@routes.get("/api/v1/admin/sales", auth="admin", query=SalesQuery, response=SaleBoards,
            errors=(422,))
async def list_sales(request: web.Request, query: SalesQuery) -> SaleBoards:
    """Every sale's board, newest first, optionally of one status (admin)."""
    return SaleBoards(items=await sale_boards(services(request).sales, status=query.status,
                                              limit=query.limit))


@routes.get("/api/v1/admin/sales/{sale_id}", auth="admin", response=SaleBoard)
async def get_sale_board(request: web.Request) -> SaleBoard:
    """A sale's board: books, reconciler lag, window and limits (admin)."""
    return await _board(request, path_int(request, "sale_id"))


async def _change(request: web.Request, action: str) -> SaleBoard:
    sale_id = path_int(request, "sale_id")
    await services(request).sales.change_state(sale_id, action)
    return await _board(request, sale_id)


@routes.post("/api/v1/admin/sales/{sale_id}/pause", auth="admin", response=SaleBoard,
             errors=(409,))
async def pause_sale(request: web.Request) -> SaleBoard:
    """Pause a sale: reservations answer 409 sale_not_active; holds can still be paid."""
    return await _change(request, "pause")


@routes.post("/api/v1/admin/sales/{sale_id}/resume", auth="admin", response=SaleBoard,
             errors=(409,))
async def resume_sale(request: web.Request) -> SaleBoard:
    """Resume a paused sale."""
    return await _change(request, "resume")


@routes.post("/api/v1/admin/sales/{sale_id}/end", auth="admin", response=SaleBoard,
             errors=(409,))
async def end_sale(request: web.Request) -> SaleBoard:
    """End a sale now: no new reservations; unsold units return to stock once drained."""
    return await _change(request, "end")
