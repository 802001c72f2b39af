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


# One statement: the co-purchases, walking copurchases_rank_idx in this exact order and
# stopping after `limit` available rows; only when there are none, the category's
# top-rated available products, walking its rating index from the top.
_ALSO_BOUGHT = """
WITH bought AS MATERIALIZED (
    SELECT true AS bought, c.orders, {columns} FROM copurchases c
    JOIN products p ON p.product_id = c.other_id AND p.status = 'active'
    JOIN inventory i ON i.product_id = c.other_id AND i.available_qty > 0
    WHERE c.product_id = $1 AND c.orders > 0
    ORDER BY c.orders DESC, c.other_rating DESC, c.other_id ASC LIMIT {limit}
)
SELECT * FROM bought
UNION ALL
(SELECT false, 0, {columns} FROM products p
 JOIN inventory i ON i.product_id = p.product_id AND i.available_qty > 0
 WHERE NOT EXISTS (SELECT 1 FROM bought)
   AND p.category_id = (SELECT category_id FROM products WHERE product_id = $1)
   AND p.status = 'active' AND p.product_id <> $1
 ORDER BY p.rating_avg DESC, p.rating_count DESC, p.product_id DESC LIMIT {limit})"""


class AlsoBoughtService:
    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def for_product(self, product_id: int, *, limit: int) -> AlsoBought:
        # The limit is written into the statement (one prepared statement per limit): a
        # generic plan with an unknown LIMIT expects thousands of rows and goes parallel.
        rows = await self._pool.fetch(
            _ALSO_BOUGHT.format(columns=PRODUCT_COLUMNS, limit=int(limit)), product_id)
        if not rows and not await self._pool.fetchval(
                "SELECT true FROM products WHERE product_id = $1", product_id):
            raise NotFound("No such product.")
        items = [_item(r) for r in rows]
        # The order each branch walked its index in (UNION ALL keeps no order by itself).
        if rows and rows[0]["bought"]:
            items.sort(key=lambda i: (-i.orders_together, -i.rating_avg, i.product_id))
            return AlsoBought(items=items, fallback=False)
        items.sort(key=lambda i: (-i.rating_avg, -i.rating_count, -i.product_id))
        return AlsoBought(items=items, fallback=True)


def _item(row: asyncpg.Record) -> AlsoBoughtItem:
    _, orders, *product = row.values()
    return AlsoBoughtItem(*product, orders_together=orders)
