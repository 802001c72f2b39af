"""What the catalog hands out: typed, immutable records (msgspec Structs), shared by the
services, the caches and the HTTP layer (which encodes them as they are)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec


class Product(msgspec.Struct, frozen=True):
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


class ProductPage(msgspec.Struct, frozen=True):
    items: list[Product]
    page: int
    page_size: int
    total: int
    # Opaque keyset cursor for the next page (null on the last page): deep pages stay as
    # fast as the first one, unlike page numbers.
    next_cursor: str | None = None


class FacetValue(msgspec.Struct, frozen=True, omit_defaults=True):
    value: str | int
    count: int
    name: str | None = None  # the category's name, for category facets


class PriceBucket(msgspec.Struct, frozen=True):
    min: Decimal
    max: Decimal | None  # null: no upper bound
    count: int


class RatingBucket(msgspec.Struct, frozen=True):
    min: int  # "min stars and up"
    count: int


class Facets(msgspec.Struct, frozen=True):
    brand: list[FacetValue]
    category: list[FacetValue]
    price: list[PriceBucket]
    rating: list[RatingBucket]


class SearchPage(msgspec.Struct, frozen=True):
    items: list[Product]
    total: int
    page: int
    page_size: int
    facets: Facets
    did_you_mean: str | None = None


class Review(msgspec.Struct, frozen=True):
    review_id: int
    product_id: int
    author: str
    rating: int
    title: str
    body: str
    verified_purchase: bool
    created_at: datetime


class ReviewPage(msgspec.Struct, frozen=True):
    items: list[Review]
    page: int
    page_size: int
    total: int
    rating_avg: Decimal
    rating_count: int


class Category(msgspec.Struct, frozen=True):
    category_id: int
    name: str
    parent_id: int | None
    children: list[Category] = []


class ProductCounts(msgspec.Struct, frozen=True):
    total: int
    active: int
    inactive: int
    archived: int


class StockFigures(msgspec.Struct, frozen=True):
    available_units: int
    reserved_units: int
    out_of_stock: int  # active products with no available units
    low_stock: int  # active products with 1..LOW_STOCK units


class SalesFigures(msgspec.Struct, frozen=True):
    orders: int
    units_sold: int
    revenue: dict[str, Decimal]  # by currency
    since: datetime | None


class TopProduct(msgspec.Struct, frozen=True):
    product_id: int
    name: str
    units_sold: int
    revenue: Decimal


class Dashboard(msgspec.Struct, frozen=True):
    seller_id: int
    products: ProductCounts
    stock: StockFigures
    sales: SalesFigures
    top_products: list[TopProduct]
    rating_avg: Decimal  # over the seller's reviewed products, weighted by review count
    rating_count: int
