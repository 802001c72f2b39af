"""Customers also bought: products ranked by the number of counted orders holding both.

The counts live in ``copurchases`` (product, other product, orders), both directions
stored, kept by a trigger as each order's transaction commits: an order counts while it
is paid, shipped or delivered, and cancelling or returning it takes its pairs back out
(migrations/0017_discovery.sql). So a new order shows as soon as it is paid. Each row also
carries the other product's rating (kept by a trigger), so a read walks one index in the
final order (orders, rating, id) joined to the live product rows and stops after ``limit``
available ones: never the product itself, never an inactive or out-of-stock product.

Cold start: a product nobody has bought with anything yet gets the top-rated available
products of its own category instead, and the answer says so (``fallback: true``).
"""

from __future__ import annotations

import asyncpg
import msgspec

from catalog.products import PRODUCT_COLUMNS
from catalog.records import Product
from engine.errors import NotFound


class AlsoBoughtItem(Product, frozen=True):
    orders_together: int  # counted orders holding both products (0 in a fallback)


class AlsoBought(msgspec.Struct, frozen=True):
    items: list[AlsoBoughtItem]
    fallback: bool  # True: no co-purchases yet, top-rated products of the category


# Walks copurchases_rank_idx in this exact order and stops after `limit` available rows.
_BOUGHT_WITH = (
    f"SELECT c.orders, {PRODUCT_COLUMNS} FROM copurchases c"
    " JOIN products p ON p.product_id = c.other_id AND p.status = 'active'"
    " JOIN inventory i ON i.product_id = c.other_id AND i.available_qty > 0"
    " WHERE c.product_id = $1 AND c.orders > 0"
    " ORDER BY c.orders DESC, c.other_rating DESC, c.other_id ASC LIMIT $2")

# Walks the category's rating index from the top; stops after `limit` available ones.
_TOP_RATED = (
    f"SELECT 0 AS orders, {PRODUCT_COLUMNS} FROM products p"
    " JOIN inventory i ON i.product_id = p.product_id AND i.available_qty > 0"
    " WHERE p.category_id = $1 AND p.status = 'active' AND p.product_id <> $2"
    " ORDER BY p.rating_avg DESC, p.rating_count DESC, p.product_id DESC LIMIT $3")


class AlsoBoughtService:
    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def for_product(self, product_id: int, *, limit: int) -> AlsoBought:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_BOUGHT_WITH, product_id, limit)
            if rows:
                return AlsoBought(items=[_item(r) for r in rows], fallback=False)
            category = await conn.fetchrow(
                "SELECT category_id FROM products WHERE product_id = $1", product_id)
            if category is None:
                raise NotFound("No such product.")
            if category["category_id"] is None:
                return AlsoBought(items=[], fallback=True)
            rows = await conn.fetch(_TOP_RATED, category["category_id"], product_id, limit)
        return AlsoBought(items=[_item(r) for r in rows], fallback=True)


def _item(row: asyncpg.Record) -> AlsoBoughtItem:
    orders, *product = row.values()
    return AlsoBoughtItem(*product, orders_together=orders)
