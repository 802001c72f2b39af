"""What a seller sees of its own business: its products and the dashboard figures.

Units sold and revenue come from order lines of orders that were placed and not undone
(status placed, paid, shipped or delivered; cancelled and returned orders do not count).
Revenue is the sum of those lines' subtotals (before order-level coupons, tax and
shipping), per currency.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg

from catalog.products import PRODUCT_COLUMNS, product_from
from catalog.records import (
    Dashboard,
    ProductCounts,
    ProductPage,
    SalesFigures,
    StockFigures,
    TopProduct,
)
from engine.errors import NotFound, ValidationFailed
from engine.sql import Params

LOW_STOCK = 5
TOP_PRODUCTS = 5
SOLD = ("placed", "paid", "shipped", "delivered")


class Sellers:
    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def products(self, seller_id: int | None, *, status: str | None, page: int,
                       page_size: int) -> ProductPage:
        """The seller's products, newest first (all sellers' for an admin without one)."""
        if page * page_size > 10_000:
            raise ValidationFailed.at("query.page", "pages reach the first 10000 products")
        arg, where = Params(), ["true"]
        if seller_id is not None:
            where.append(f"p.seller_id = {arg(seller_id)}")
        if status is not None:
            where.append(f"p.status = {arg(status)}")
        condition = " AND ".join(where)
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                f"SELECT count(*) FROM products p WHERE {condition}", *arg.values)
            rows = await conn.fetch(
                f"SELECT {PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i"
                f" USING (product_id) WHERE {condition} ORDER BY p.product_id DESC"
                f" LIMIT {arg(page_size)} OFFSET {arg((page - 1) * page_size)}", *arg.values)
        return ProductPage(items=[product_from(r) for r in rows], page=page,
                           page_size=page_size, total=total)

    async def dashboard(self, seller_id: int, *, since: datetime | None) -> Dashboard:
        async with self._pool.acquire() as conn, conn.transaction(readonly=True,
                                                                  isolation="repeatable_read"):
            if not await conn.fetchval(
                    "SELECT 1 FROM users WHERE user_id = $1 AND role IN ('seller', 'admin')",
                    seller_id):
                raise NotFound("No such seller.")
            # One snapshot: the figures agree with each other.
            catalog = await conn.fetchrow(
                "SELECT count(*) AS total,"
                " count(*) FILTER (WHERE p.status = 'active') AS active,"
                " count(*) FILTER (WHERE p.status = 'inactive') AS inactive,"
                " count(*) FILTER (WHERE p.status = 'archived') AS archived,"
                " coalesce(sum(i.available_qty), 0) AS available_units,"
                " coalesce(sum(i.reserved_qty), 0) AS reserved_units,"
                " count(*) FILTER (WHERE p.status = 'active'"
                "   AND coalesce(i.available_qty, 0) = 0) AS out_of_stock,"
                " count(*) FILTER (WHERE p.status = 'active'"
                "   AND i.available_qty BETWEEN 1 AND $2) AS low_stock,"
                " coalesce(sum(p.rating_sum), 0)::bigint AS rating_sum,"
                " coalesce(sum(p.rating_count), 0) AS rating_count"
                " FROM products p LEFT JOIN inventory i USING (product_id)"
                " WHERE p.seller_id = $1", seller_id, LOW_STOCK)
            lines = await conn.fetch(
                "SELECT oi.product_id, p.name, o.currency, count(DISTINCT o.order_id) AS orders,"
                " sum(oi.quantity) AS units, sum(oi.subtotal) AS revenue"
                " FROM products p JOIN order_items oi USING (product_id)"
                " JOIN orders o USING (order_id)"
                " WHERE p.seller_id = $1 AND o.status = ANY($2::text[])"
                " AND ($3::timestamptz IS NULL OR o.created_at >= $3)"
                " GROUP BY oi.product_id, p.name, o.currency", seller_id, list(SOLD), since)
            orders = await conn.fetchval(
                "SELECT count(DISTINCT o.order_id) FROM products p"
                " JOIN order_items oi USING (product_id) JOIN orders o USING (order_id)"
                " WHERE p.seller_id = $1 AND o.status = ANY($2::text[])"
                " AND ($3::timestamptz IS NULL OR o.created_at >= $3)",
                seller_id, list(SOLD), since)
        revenue: dict[str, Decimal] = {}
        per_product: dict[int, list] = {}
        for line in lines:
            revenue[line["currency"]] = revenue.get(line["currency"], Decimal(0)) + line["revenue"]
            entry = per_product.setdefault(line["product_id"], [line["name"], 0, 0])
            entry[1] += line["units"]
            entry[2] += line["revenue"]
        top = sorted(per_product.items(), key=lambda kv: (-kv[1][2], -kv[1][1], kv[0]))
        count = catalog["rating_count"]
        average = (catalog["rating_sum"] * 100 * 2 + count) // (2 * count) if count else 0
        return Dashboard(
            seller_id=seller_id,
            products=ProductCounts(total=catalog["total"], active=catalog["active"],
                                   inactive=catalog["inactive"], archived=catalog["archived"]),
            stock=StockFigures(available_units=catalog["available_units"],
                               reserved_units=catalog["reserved_units"],
                               out_of_stock=catalog["out_of_stock"],
                               low_stock=catalog["low_stock"]),
            sales=SalesFigures(orders=orders, units_sold=sum(v[1] for v in per_product.values()),
                               revenue=revenue, since=since),
            top_products=[TopProduct(product_id=pid, name=name, units_sold=units,
                                     revenue=amount)
                          for pid, (name, units, amount) in top[:TOP_PRODUCTS]],
            rating_avg=Decimal(average).scaleb(-2), rating_count=count)
