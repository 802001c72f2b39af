"""Reviews: one per user and product, and the product's rating kept exact.

The review row and the product's ``rating_count``/``rating_sum``/``rating_avg`` change in
one transaction. The product row's lock orders concurrent reviews of a product, and the
average is recomputed from the integer totals each time (``round(sum / count, 2)``), so
twenty simultaneous reviews leave exactly the figures a sequential run would.
"""

from __future__ import annotations

import asyncpg

from catalog.cache import CatalogCache
from catalog.records import Review, ReviewPage
from engine.errors import Conflict, NotFound, ValidationFailed

REVIEW_SORTS = {
    "newest": "r.created_at DESC, r.review_id DESC",
    "rating_desc": "r.rating DESC, r.created_at DESC, r.review_id DESC",
    "rating_asc": "r.rating ASC, r.created_at DESC, r.review_id DESC",
}
MAX_REVIEW_WINDOW = 10_000

# An order that was paid for (or is on its way) makes a review a verified purchase.
_PURCHASED = """EXISTS (SELECT 1 FROM orders o JOIN order_items oi USING (order_id)
    WHERE o.user_id = r.user_id AND oi.product_id = r.product_id
      AND o.status IN ('placed', 'paid', 'shipped', 'delivered'))"""
_REVIEW_COLUMNS = f"""r.review_id, r.product_id, u.name AS author, r.rating, r.title, r.body,
    {_PURCHASED} AS verified_purchase, r.created_at"""


class Reviews:
    def __init__(self, *, pool: asyncpg.Pool, cache: CatalogCache) -> None:
        self._pool = pool
        self._cache = cache

    async def add(self, product_id: int, *, user_id: int, rating: int, title: str,
                  body: str) -> Review:
        if not 1 <= rating <= 5:
            raise ValidationFailed.at("$.rating", "must be from 1 to 5")
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                review_id = await conn.fetchval(
                    "INSERT INTO reviews (product_id, user_id, rating, title, body)"
                    " VALUES ($1, $2, $3, $4, $5) RETURNING review_id",
                    product_id, user_id, rating, title.strip(), body.strip())
            except asyncpg.UniqueViolationError as exc:
                raise Conflict("You have already reviewed this product.") from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound("No such product.") from exc
            # Locks the product row: concurrent reviews of one product take turns here and
            # each sees the totals the previous one committed.
            await conn.execute(
                "UPDATE products SET rating_count = rating_count + 1,"
                " rating_sum = rating_sum + $2,"
                " rating_avg = round((rating_sum + $2)::numeric / (rating_count + 1), 2)"
                " WHERE product_id = $1", product_id, rating)
            row = await conn.fetchrow(
                f"SELECT {_REVIEW_COLUMNS} FROM reviews r JOIN users u USING (user_id)"
                " WHERE r.review_id = $1", review_id)
        # Ratings reach cached listings when they expire; the product page at once.
        await self._cache.changed((product_id,), listings=False)
        return Review(**dict(row))

    async def page(self, product_id: int, *, sort: str, page: int, page_size: int
                   ) -> ReviewPage:
        if page * page_size > MAX_REVIEW_WINDOW:
            raise ValidationFailed.at("query.page",
                                      f"pages reach the first {MAX_REVIEW_WINDOW} reviews")
        async with self._pool.acquire() as conn:
            product = await conn.fetchrow(
                "SELECT rating_avg, rating_count FROM products WHERE product_id = $1",
                product_id)
            if product is None:
                raise NotFound("No such product.")
            total = await conn.fetchval(
                "SELECT count(*) FROM reviews WHERE product_id = $1", product_id)
            rows = await conn.fetch(
                f"SELECT {_REVIEW_COLUMNS} FROM reviews r JOIN users u USING (user_id)"
                f" WHERE r.product_id = $1 ORDER BY {REVIEW_SORTS[sort]}"
                " LIMIT $2 OFFSET $3", product_id, page_size, (page - 1) * page_size)
        return ReviewPage(items=[Review(**dict(r)) for r in rows], page=page,
                          page_size=page_size, total=total,
                          rating_avg=product["rating_avg"],
                          rating_count=product["rating_count"])
