"""Purchase endpoints: cart, checkout (idempotent), orders and tracking, cancellation,
returns, coupons."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from gateway.api import Body, RouteTable, path_int, principal
from gateway.context import services
from gateway.policy import Money, Price
from gateway.types import NO_NUL, Id, Key, PageSize
from orders.cart import MAX_QUANTITY, Cart
from orders.idempotency import CheckoutRequest
from orders.returns import ReturnView
from orders.views import OrderView

routes = RouteTable("orders")

Quantity = Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]


def shopper(request: web.Request) -> int:
    """The signed-in user who shops (owner routes: the operator token never gets here)."""
    return principal(request).user_id


# -- cart --------------------------------------------------------------------------------
class CartItemRequest(Body):
    product_id: Id
    quantity: Quantity


class CartQuantityRequest(Body):
    quantity: Quantity


@routes.get("/api/v1/cart", auth="owner", response=Cart, errors=(403,))
async def get_cart(request: web.Request) -> Cart:
    """Your cart, with the prices you saw when adding each item."""
    return await services(request).carts.view(shopper(request))


@routes.post("/api/v1/cart/items", auth="owner", body=CartItemRequest, response=Cart, status=201,
             errors=(403, 404))
async def add_cart_item(request: web.Request, body: CartItemRequest) -> Cart:
    """Add units of a product (to its line if it is already in the cart)."""
    return await services(request).carts.add(shopper(request), body.product_id, body.quantity)


@routes.put("/api/v1/cart/items/{item_id}", auth="owner", body=CartQuantityRequest, response=Cart,
            errors=(403,))
async def set_cart_item(request: web.Request, body: CartQuantityRequest) -> Cart:
    """Set a line's quantity."""
    return await services(request).carts.set_quantity(
        shopper(request), path_int(request, "item_id"), body.quantity)


@routes.delete("/api/v1/cart/items/{item_id}", auth="owner", response=Cart, errors=(403,))
async def remove_cart_item(request: web.Request) -> Cart:
    """Remove a line."""
    return await services(request).carts.remove(shopper(request), path_int(request, "item_id"))


# -- checkout and orders -----------------------------------------------------------------
class CheckoutBody(Body):
    idempotency_key: Key
    shipping_address_id: Id
    payment_method_id: Id
    reservation_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    coupon_code: Annotated[str, Meta(min_length=1, max_length=32)] | None = None


class OrdersQuery(msgspec.Struct):
    status: Literal["placed", "paid", "shipped", "delivered", "cancelled", "returned"] | None = None
    page: Annotated[int, Meta(ge=1, le=100_000)] = 1
    page_size: PageSize = 20


class OrderPage(msgspec.Struct):
    items: list[OrderView]
    total: int
    page: int
    page_size: int


class TransitionRequest(Body):
    status: Literal["shipped", "delivered"]


@routes.post("/api/v1/orders", auth="owner", also=(200,), body=CheckoutBody,
             response=OrderView, status=201, errors=(403, 404, 409, 422))
async def place_order(request: web.Request, body: CheckoutBody) -> web.Response:
    """Check out the cart, or a flash-sale hold with ``reservation_id``. Idempotent: the
    same key and body again answer 200 with the first response."""
    result = await services(request).checkout.place(shopper(request), CheckoutRequest(
        idempotency_key=body.idempotency_key, shipping_address_id=body.shipping_address_id,
        payment_method_id=body.payment_method_id, reservation_id=body.reservation_id,
        coupon_code=body.coupon_code))
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return web.Response(body=result.body, status=result.status,
                        content_type="application/json", headers=headers)


@routes.get("/api/v1/orders", auth="owner", query=OrdersQuery, response=OrderPage)
async def list_orders(request: web.Request, query: OrdersQuery) -> OrderPage:
    """Your orders, newest first, optionally of one status."""
    items, total = await services(request).orders.history(
        principal(request).user_id, status=query.status, page=query.page,
        page_size=query.page_size)
    return OrderPage(items=items, total=total, page=query.page, page_size=query.page_size)


@routes.get("/api/v1/orders/{order_id}", auth="owner", response=OrderView)
async def get_order(request: web.Request) -> OrderView:
    """One of your orders, with its tracking events."""
    return await services(request).orders.get(path_int(request, "order_id"),
                                               user_id=principal(request).user_id)


@routes.get("/api/v1/admin/orders/{order_id}", auth="admin", response=OrderView)
async def admin_get_order(request: web.Request) -> OrderView:
    """Any user's order, with its tracking events (admin support)."""
    return await services(request).orders.get(path_int(request, "order_id"), user_id=0,
                                               is_admin=True)


@routes.post("/api/v1/orders/{order_id}/cancel", auth="owner", response=OrderView, errors=(409,))
async def cancel_order(request: web.Request) -> OrderView:
    """Cancel an order that has not shipped: refund it and put its units back."""
    return await services(request).orders.cancel(path_int(request, "order_id"),
                                                  user_id=principal(request).user_id)


@routes.post("/api/v1/admin/orders/{order_id}/cancel", auth="admin", response=OrderView,
             errors=(409,))
async def admin_cancel_order(request: web.Request) -> OrderView:
    """Cancel any user's order that has not shipped (admin support): refund and restock."""
    return await services(request).orders.cancel(path_int(request, "order_id"), user_id=0,
                                                  is_admin=True)


@routes.post("/api/v1/admin/orders/{order_id}/transition", auth="admin", body=TransitionRequest,
             response=OrderView, errors=(409,))
async def transition_order(request: web.Request, body: TransitionRequest) -> OrderView:
    """Move an order along: shipped, then delivered (admin)."""
    return await services(request).orders.transition(path_int(request, "order_id"), body.status)


# -- returns -----------------------------------------------------------------------------
class ReturnLine(Body):
    order_item_id: Id
    quantity: Quantity


class ReturnRequest(Body):
    items: Annotated[list[ReturnLine], Meta(min_length=1, max_length=100)]
    reason: Annotated[str, Meta(min_length=1, max_length=1000, pattern=NO_NUL)]


class ReturnDecision(Body):
    status: Literal["refunded", "rejected"]


@routes.post("/api/v1/orders/{order_id}/returns", auth="owner",
             body=ReturnRequest, response=ReturnView,
             status=201, errors=(409,))
async def request_return(request: web.Request, body: ReturnRequest) -> ReturnView:
    """Return items of a delivered order, within 30 days of delivery."""
    return await services(request).returns.request(
        path_int(request, "order_id"), user_id=principal(request).user_id,
        items=[(line.order_item_id, line.quantity) for line in body.items], reason=body.reason)


@routes.get("/api/v1/orders/{order_id}/returns", auth="owner", response=list[ReturnView])
async def list_returns(request: web.Request) -> list[ReturnView]:
    """The returns of one of your orders."""
    return await services(request).returns.for_order(path_int(request, "order_id"),
                                                     user_id=principal(request).user_id,
                                                     is_admin=False)


@routes.get("/api/v1/admin/orders/{order_id}/returns", auth="admin",
            response=list[ReturnView])
async def admin_list_returns(request: web.Request) -> list[ReturnView]:
    """The returns of any user's order (admin support)."""
    return await services(request).returns.for_order(path_int(request, "order_id"),
                                                     user_id=0, is_admin=True)


@routes.post("/api/v1/admin/returns/{return_id}/decision", auth="admin", body=ReturnDecision,
             response=ReturnView, errors=(409,))
async def decide_return(request: web.Request, body: ReturnDecision) -> ReturnView:
    """Accept a return (goods received: refund and restock) or reject it (admin)."""
    return await services(request).returns.decide(path_int(request, "return_id"), body.status)


# -- coupons -----------------------------------------------------------------------------
class NewCoupon(Body):
    code: Annotated[str, Meta(min_length=3, max_length=32)]
    percent_off: Price | None = None
    amount_off: Price | None = None
    min_subtotal: Money = Decimal("0")
    max_redemptions: Annotated[int, Meta(ge=1, le=1_000_000_000)] | None = None
    per_user_limit: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    expires_at: datetime | None = None


class Coupon(msgspec.Struct):
    coupon_id: int
    code: str
    percent_off: Decimal | None
    amount_off: Decimal | None
    min_subtotal: Decimal
    max_redemptions: int | None
    per_user_limit: int | None
    expires_at: datetime | None
    redeemed: int
    active: bool
    created_at: datetime


@routes.post("/api/v1/admin/coupons", auth="admin", body=NewCoupon, response=Coupon,
             status=201, errors=(409,))
async def create_coupon(request: web.Request, body: NewCoupon) -> Coupon:
    """Create a coupon: percent or amount off, with optional limits and expiry (admin)."""
    row = await services(request).coupons.create(
        code=body.code, percent_off=body.percent_off, amount_off=body.amount_off,
        min_subtotal=body.min_subtotal, max_redemptions=body.max_redemptions,
        per_user_limit=body.per_user_limit, expires_at=body.expires_at)
    return Coupon(**row)


@routes.get("/api/v1/admin/coupons", auth="admin", response=list[Coupon])
async def list_coupons(request: web.Request) -> list[Coupon]:
    """Every coupon with its redemption count (admin)."""
    return [Coupon(**row) for row in await services(request).coupons.all()]


@routes.get("/api/v1/admin/coupons/{code}", auth="admin", response=Coupon)
async def get_coupon(request: web.Request) -> Coupon:
    """One coupon with its redemption count (admin)."""
    return Coupon(**await services(request).coupons.get(request.match_info["code"]))
