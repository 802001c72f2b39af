"""Catalog endpoints: product page, browse, search, suggest, reviews, sellers, categories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from catalog.query import Filters
from catalog.records import Category, Dashboard, Product, ProductPage, Review, ReviewPage
from catalog.records import SearchPage as SearchResponse
from engine.errors import Forbidden, ValidationFailed
from engine.money import check_amount
from gateway.api import Body, RouteTable, path_int, principal
from gateway.context import services
from gateway.policy import Money, Price
from gateway.types import NO_NUL, Id, PageSize

routes = RouteTable("catalog")

Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Description = Annotated[str, Meta(max_length=10_000, pattern=NO_NUL)]
Brand = Annotated[str, Meta(max_length=100, pattern=NO_NUL)]
Qty = Annotated[int, Meta(ge=0, le=1_000_000_000)]
Page = Annotated[int, Meta(ge=1, le=10_000)]
Rating = Annotated[Decimal, Meta(description="0 to 5")]
MAX_CHOICES = 20  # values of one repeatable filter (brand=A&brand=B...)


class NewProduct(Body):
    name: Name
    price: Price
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
    price: Price | UnsetType = UNSET
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


class NewReview(Body):
    rating: Annotated[int, Meta(ge=1, le=5)]
    title: Annotated[str, Meta(max_length=200, pattern=NO_NUL)] = ""
    body: Annotated[str, Meta(max_length=5000, pattern=NO_NUL)] = ""


class BrowseQuery(msgspec.Struct):
    category: Annotated[Id, Meta(description="Repeat for several (any of them); a category "
                                             "includes its descendants.")] | None = None
    brand: Annotated[Brand, Meta(description="Exact brand; repeat for several.")] | None = None
    price_min: Money | None = None
    price_max: Money | None = None
    rating_min: Rating | None = None
    sort: Literal["newest", "price_asc", "price_desc", "rating"] = "newest"
    page: Page = 1
    page_size: PageSize = 20
    cursor: Annotated[str, Meta(max_length=1000, description="next_cursor of the previous "
                                                             "page; page is then ignored")] \
        | None = None


class SearchQuery(msgspec.Struct):
    q: Annotated[str, Meta(min_length=1, max_length=200)]
    category: Id | None = None
    brand: Brand | None = None
    price_min: Money | None = None
    price_max: Money | None = None
    rating_min: Rating | None = None
    sort: Literal["relevance", "price_asc", "price_desc", "rating", "newest"] = "relevance"
    page: Page = 1
    page_size: PageSize = 20


class SuggestQuery(msgspec.Struct):
    q: Annotated[str, Meta(max_length=200)] = ""
    limit: Annotated[int, Meta(ge=1, le=20)] = 10


class Suggestions(msgspec.Struct):
    suggestions: list[str]


class ReviewsQuery(msgspec.Struct):
    sort: Literal["newest", "rating_desc", "rating_asc"] = "newest"
    page: Page = 1
    page_size: PageSize = 20


class SellerProductsQuery(msgspec.Struct):
    status: Literal["active", "inactive", "archived"] | None = None
    seller_id: Id | None = None  # admins: one seller's products
    page: Page = 1
    page_size: PageSize = 20


class DashboardQuery(msgspec.Struct):
    seller_id: Id | None = None  # required for an admin
    days: Annotated[int, Meta(ge=1, le=3650)] | None = None  # sales of the last N days


def _acting_seller(request: web.Request) -> int | None:
    """The seller whose products the caller may touch; None for an admin (any seller)."""
    who = principal(request)
    if who.is_admin:
        return None
    if who.role != "seller":
        raise Forbidden("This needs a seller account.")
    return who.user_id


def _text(name: str, value: str) -> str:
    if "\x00" in value:
        raise ValidationFailed.at(f"query.{name}", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed.at(f"query.{name}", "must be valid UTF-8") from None
    return value


def _choices(request: web.Request, name: str) -> list[str]:
    values = request.query.getall(name, [])
    if len(values) > MAX_CHOICES:
        raise ValidationFailed.at(f"query.{name}", f"at most {MAX_CHOICES} values")
    return [_text(name, v) for v in values]


def _amount(name: str, value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return check_amount(value)
    except ValueError as exc:
        raise ValidationFailed.at(f"query.{name}", str(exc)) from None


async def _filters(request: web.Request, query: BrowseQuery | SearchQuery) -> Filters:
    """Filters from the query; brand and category may repeat (any of the values)."""
    categories = None
    raw_categories = _choices(request, "category")
    if raw_categories:
        if not all(v.isascii() and v.isdigit() and 0 < len(v) <= 18 for v in raw_categories):
            raise ValidationFailed.at("query.category", "category ids are positive integers")
        expanded = await services(request).categories.expand(
            sorted({int(v) for v in raw_categories}))
        categories = () if expanded is None else tuple(expanded)
    brands = tuple(sorted({b.strip() for b in _choices(request, "brand") if b.strip()}))
    if any(len(b) > 100 for b in brands):
        raise ValidationFailed.at("query.brand", "at most 100 characters")
    price_min = _amount("price_min", query.price_min)
    price_max = _amount("price_max", query.price_max)
    if price_min is not None and price_max is not None and price_min > price_max:
        raise ValidationFailed.at("query.price_min", "must not exceed price_max")
    rating_min = query.rating_min
    if rating_min is not None and not (rating_min.is_finite() and 0 <= rating_min <= 5):
        raise ValidationFailed.at("query.rating_min", "must be from 0 to 5")
    return Filters(categories=categories, brands=brands, price_min=price_min,
                   price_max=price_max, rating_min=rating_min)


# -- shoppers ----------------------------------------------------------------------------
@routes.get("/api/v1/products/{product_id}", auth="public", response=Product)
async def get_product(request: web.Request) -> Product:
    """The product page (cached: figures at most one second old)."""
    return await services(request).products.get(path_int(request, "product_id"))


@routes.get("/api/v1/products", auth="public", query=BrowseQuery, response=ProductPage)
async def browse(request: web.Request, query: BrowseQuery) -> ProductPage:
    """Browse active products by category, brand, price and rating, in one of four sorts."""
    return await services(request).browse.page(
        await _filters(request, query), sort=query.sort, page=query.page,
        page_size=query.page_size, cursor=query.cursor)


@routes.get("/api/v1/search", auth="public", query=SearchQuery, response=SearchResponse)
async def search(request: web.Request, query: SearchQuery) -> SearchResponse:
    """Full-text search with filters and disjunctive facets."""
    return await services(request).search.search(
        _text("q", query.q), await _filters(request, query), sort=query.sort,
        page=query.page, page_size=query.page_size)


@routes.get("/api/v1/search/suggest", auth="public", query=SuggestQuery, response=Suggestions)
async def suggest(request: web.Request, query: SuggestQuery) -> Suggestions:
    """Autocomplete: completions of the word being typed, most used first."""
    return Suggestions(await services(request).suggestions.suggest(
        _text("q", query.q), limit=query.limit))


@routes.post("/api/v1/products/{product_id}/reviews", auth="owner", body=NewReview, response=Review,
             status=201, errors=(409,))
async def add_review(request: web.Request, body: NewReview) -> Review:
    """Review a product (one review per user and product)."""
    return await services(request).reviews.add(
        path_int(request, "product_id"), user_id=principal(request).user_id,
        rating=body.rating, title=body.title, body=body.body)


@routes.get("/api/v1/products/{product_id}/reviews", auth="public", query=ReviewsQuery,
            response=ReviewPage)
async def list_reviews(request: web.Request, query: ReviewsQuery) -> ReviewPage:
    """A product's reviews, with its rating figures."""
    return await services(request).reviews.page(
        path_int(request, "product_id"), sort=query.sort, page=query.page,
        page_size=query.page_size)


@routes.get("/api/v1/categories", auth="public", response=list[Category])
async def list_categories(request: web.Request) -> list[Category]:
    """The category tree."""
    return await services(request).categories.tree()


@routes.post("/api/v1/admin/categories", auth="admin", body=NewCategory, response=Category,
             status=201, errors=(409,))
async def create_category(request: web.Request, body: NewCategory) -> Category:
    """Create a category (admin)."""
    return await services(request).categories.create(name=body.name, parent_id=body.parent_id)


# -- sellers -----------------------------------------------------------------------------
@routes.post("/api/v1/seller/products", body=NewProduct, response=Product, status=201,
             errors=(403, 404))
async def create_product(request: web.Request, body: NewProduct) -> Product:
    """Create a product (seller, or admin acting for a seller)."""
    seller = _acting_seller(request)
    if seller is not None and body.seller_id not in (None, seller):
        raise Forbidden("A seller creates products only for itself.")
    owner = seller if seller is not None else (body.seller_id or principal(request).user_id or None)
    return await services(request).products.create(
        seller_id=owner, name=body.name, description=body.description, brand=body.brand,
        category_id=body.category_id, price=body.price, currency=body.currency,
        available_qty=body.available_qty)


@routes.patch("/api/v1/seller/products/{product_id}", body=ProductPatch, response=Product,
              errors=(403,))
async def update_product(request: web.Request, body: ProductPatch) -> Product:
    """Change a product's name, description, brand, category, price or status."""
    changes = {f: getattr(body, f) for f in body.__struct_fields__
               if getattr(body, f) is not UNSET}
    return await services(request).products.update(
        path_int(request, "product_id"), seller_id=_acting_seller(request), changes=changes)


@routes.put("/api/v1/seller/products/{product_id}/inventory", body=StockRequest, response=Stock,
            errors=(403,))
async def set_inventory(request: web.Request, body: StockRequest) -> Stock:
    """Set a product's available stock."""
    row = await services(request).products.set_stock(
        path_int(request, "product_id"), seller_id=_acting_seller(request),
        available_qty=body.available_qty)
    return Stock(**row)


@routes.get("/api/v1/seller/products", query=SellerProductsQuery, response=ProductPage,
            errors=(403, 404))
async def seller_products(request: web.Request, query: SellerProductsQuery) -> ProductPage:
    """The seller's own products, any status, newest first."""
    seller = _acting_seller(request)
    return await services(request).sellers.products(
        seller if seller is not None else query.seller_id, status=query.status,
        page=query.page, page_size=query.page_size)


@routes.get("/api/v1/seller/dashboard", query=DashboardQuery, response=Dashboard,
            errors=(403, 404))
async def seller_dashboard(request: web.Request, query: DashboardQuery) -> Dashboard:
    """Products, stock, units sold and revenue of a seller (admins name the seller)."""
    seller = _acting_seller(request)
    if seller is None:
        if query.seller_id is None:
            raise ValidationFailed.at("query.seller_id", "an admin names the seller")
        seller = query.seller_id
    since = datetime.now(UTC) - timedelta(days=query.days) if query.days else None
    return await services(request).sellers.dashboard(seller, since=since)
