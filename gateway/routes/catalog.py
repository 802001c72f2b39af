"""Catalog endpoints: product page, seller product management, categories."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from engine.errors import Forbidden
from gateway.api import Body, RouteTable, path_int, principal
from gateway.context import services

routes = RouteTable("catalog")


Name = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=10_000)]
Brand = Annotated[str, Meta(max_length=100)]
Qty = Annotated[int, Meta(ge=0, le=1_000_000_000)]
Id = Annotated[int, Meta(ge=1)]


class Product(msgspec.Struct):
    product_id: int
    seller_id: int | None
    name: str
    description: str
    brand: str
    category_id: int | None
    price: Decimal
    currency: str
    rating_avg: Decimal
    rating_count: int
    available_qty: int
    status: str
    created_at: datetime


class NewProduct(Body):
    name: Name
    price: Decimal
    description: Description = ""
    brand: Brand = ""
    category_id: Id | None = None
    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$")] = "USD"
    available_qty: Qty = 0
    seller_id: Id | None = None  # admins only: create on behalf of a seller


class ProductPatch(Body):
    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    brand: Brand | UnsetType = UNSET
    category_id: Id | UnsetType | None = UNSET
    price: Decimal | UnsetType = UNSET
    status: Literal["active", "inactive", "archived"] | UnsetType = UNSET


class StockRequest(Body):
    available_qty: Qty


class Stock(msgspec.Struct):
    product_id: int
    available_qty: int
    reserved_qty: int


class NewCategory(Body):
    name: Name
    parent_id: Id | None = None


class Category(msgspec.Struct):
    category_id: int
    name: str
    parent_id: int | None
    children: list[Category] = []


def _acting_seller(request: web.Request) -> int | None:
    """The seller whose products the caller may touch; None for an admin (any seller)."""
    who = principal(request)
    if who.is_admin:
        return None
    if who.role != "seller":
        raise Forbidden("This needs a seller account.")
    return who.user_id


@routes.get("/api/v1/products/{product_id}", auth="public", response=Product)
async def get_product(request: web.Request) -> Product:
    """The product page."""
    return Product(**await services(request).products.get(path_int(request, "product_id")))


@routes.post("/api/v1/seller/products", body=NewProduct, response=Product, status=201,
             errors=(403,))
async def create_product(request: web.Request, body: NewProduct) -> Product:
    """Create a product (seller, or admin acting for a seller)."""
    seller = _acting_seller(request)
    if seller is not None and body.seller_id not in (None, seller):
        raise Forbidden("A seller creates products only for itself.")
    owner = seller if seller is not None else (body.seller_id or principal(request).user_id or None)
    row = await services(request).products.create(
        seller_id=owner, name=body.name, description=body.description, brand=body.brand,
        category_id=body.category_id, price=body.price, currency=body.currency,
        available_qty=body.available_qty)
    return Product(**row)


@routes.patch("/api/v1/seller/products/{product_id}", body=ProductPatch, response=Product,
              errors=(403,))
async def update_product(request: web.Request, body: ProductPatch) -> Product:
    """Change a product's name, description, brand, category, price or status."""
    changes = {f: getattr(body, f) for f in body.__struct_fields__
               if getattr(body, f) is not UNSET}
    row = await services(request).products.update(
        path_int(request, "product_id"), seller_id=_acting_seller(request), changes=changes)
    return Product(**row)


@routes.put("/api/v1/seller/products/{product_id}/inventory", body=StockRequest, response=Stock,
            errors=(403,))
async def set_inventory(request: web.Request, body: StockRequest) -> Stock:
    """Set a product's available stock."""
    row = await services(request).products.set_stock(
        path_int(request, "product_id"), seller_id=_acting_seller(request),
        available_qty=body.available_qty)
    return Stock(**row)


@routes.get("/api/v1/categories", auth="public", response=list[Category])
async def list_categories(request: web.Request) -> list[Category]:
    """The category tree."""
    return msgspec.convert(await services(request).categories.tree(), list[Category])


@routes.post("/api/v1/admin/categories", auth="admin", body=NewCategory, response=Category,
             status=201, errors=(409,))
async def create_category(request: web.Request, body: NewCategory) -> Category:
    """Create a category (admin)."""
    row = await services(request).categories.create(name=body.name, parent_id=body.parent_id)
    return Category(**row)
