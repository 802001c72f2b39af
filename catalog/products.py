"""Products and their stock, with seller scoping (an admin acts for any seller).

Every write commits first, then tells the cache (see catalog/cache.py): the product page
drops the product in all workers, and changes that move listings start a new generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from catalog.cache import CatalogCache
from catalog.categories import Categories
from catalog.records import Product
from catalog.suggest import apply_term_counts, product_terms, term_delta
from engine.errors import NotFound, ValidationFailed
from engine.sql import Params

__all__ = ["PRODUCT_COLUMNS", "Categories", "Products", "product_from"]

PRODUCT_COLUMNS = """p.product_id, p.seller_id, p.name, p.description, p.brand, p.category_id,
    p.price, p.currency, p.rating_avg, p.rating_count, coalesce(i.available_qty, 0)
    AS available_qty, p.status, p.created_at"""

_EDITABLE = ("name", "description", "brand", "category_id", "price", "status")
# Only a description edit leaves listings, facets and suggestions as they were.
_LISTING_FIELDS = frozenset(_EDITABLE) - {"description"}


def product_from(row: asyncpg.Record) -> Product:
    """A row selected with PRODUCT_COLUMNS, matched to the fields by name."""
    return Product(**dict(row.items()))


class Products:
    def __init__(self, *, pool: asyncpg.Pool, cache: CatalogCache) -> None:
        self._pool = pool
        self._cache = cache

    async def get(self, product_id: int) -> Product:
        """The product page, from the cache (figures at most ``product_ttl`` old)."""
        return await self._cache.product(product_id, self.load)

    async def load(self, product_id: int) -> Product | None:
        row = await self._pool.fetchrow(
            f"SELECT {PRODUCT_COLUMNS} FROM products p"
            " LEFT JOIN inventory i USING (product_id) WHERE p.product_id = $1", product_id)
        return None if row is None else product_from(row)

    async def load_many(self, product_ids: Sequence[int], *, active_only: bool = True
                        ) -> list[Product]:
        """Products in the order of ``product_ids`` (hydrating a page of ids); products
        that are gone or, with ``active_only``, no longer active are left out."""
        if not product_ids:
            return []
        rows = await self._pool.fetch(
            f"SELECT {PRODUCT_COLUMNS} FROM products p"
            " LEFT JOIN inventory i USING (product_id) WHERE p.product_id = ANY($1::bigint[])"
            + (" AND p.status = 'active'" if active_only else ""), list(product_ids))
        found = {r["product_id"]: product_from(r) for r in rows}
        return [found[i] for i in product_ids if i in found]

    async def create(self, *, seller_id: int | None, name: str, description: str, brand: str,
                     category_id: int | None, price: Decimal, currency: str,
                     available_qty: int) -> Product:
        if not name.strip():
            raise ValidationFailed.at("$.name", "must not be blank")
        async with self._pool.acquire() as conn, conn.transaction():
            await self._check_category(conn, category_id)
            await self._check_seller(conn, seller_id)
            product_id = await conn.fetchval(
                "INSERT INTO products (seller_id, name, description, brand, category_id, price,"
                " currency) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING product_id",
                seller_id, name.strip(), description, brand.strip(), category_id, price,
                currency)
            await conn.execute(
                "INSERT INTO inventory (product_id, available_qty) VALUES ($1, $2)",
                product_id, available_qty)
            await apply_term_counts(conn, term_delta(set(), product_terms(name, brand)))
        await self._cache.changed((product_id,), listings=True)
        return await self._fresh(product_id)

    async def owned(self, conn: asyncpg.Connection, product_id: int, seller_id: int | None,
                    *, lock: bool = False) -> asyncpg.Record:
        """The product row; 404 unless it exists and (when ``seller_id`` is given) is that
        seller's: another seller's product is indistinguishable from a missing one."""
        sql = ("SELECT product_id, seller_id, name, brand, status FROM products"
               " WHERE product_id = $1" + (" FOR UPDATE" if lock else ""))
        row = await conn.fetchrow(sql, product_id)
        if row is None or (seller_id is not None and row["seller_id"] != seller_id):
            raise NotFound("No such product.")
        return row

    async def update(self, product_id: int, *, seller_id: int | None,
                     changes: dict[str, Any]) -> Product:
        changes = {k: v for k, v in changes.items() if k in _EDITABLE}
        for field in ("name", "brand"):
            if field in changes:
                changes[field] = changes[field].strip()
        if changes.get("name") == "":
            raise ValidationFailed.at("$.name", "must not be blank")
        async with self._pool.acquire() as conn, conn.transaction():
            before = await self.owned(conn, product_id, seller_id, lock=True)
            if "category_id" in changes:
                await self._check_category(conn, changes["category_id"])
            if changes:
                arg = Params()
                sets = ", ".join(f"{k} = {arg(v)}" for k, v in changes.items())
                await conn.execute(
                    f"UPDATE products SET {sets}, updated_at = now()"
                    f" WHERE product_id = {arg(product_id)}", *arg.values)
                after = {**dict(before), **changes}
                await apply_term_counts(conn, term_delta(
                    _active_terms(before), _active_terms(after)))
        await self._cache.changed(
            (product_id,), listings=bool(_LISTING_FIELDS.intersection(changes)))
        return await self._fresh(product_id)

    async def set_stock(self, product_id: int, *, seller_id: int | None,
                        available_qty: int) -> dict[str, Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            await self.owned(conn, product_id, seller_id)
            row = await conn.fetchrow(
                "INSERT INTO inventory (product_id, available_qty) VALUES ($1, $2)"
                " ON CONFLICT (product_id) DO UPDATE SET available_qty = EXCLUDED.available_qty,"
                " version = inventory.version + 1, updated_at = now()"
                " RETURNING product_id, available_qty, reserved_qty", product_id, available_qty)
        await self._cache.changed((product_id,), listings=False)
        return dict(row)

    async def _fresh(self, product_id: int) -> Product:
        found = await self.load(product_id)
        if found is None:
            raise NotFound("No such product.")
        return found

    @staticmethod
    async def _check_category(conn: asyncpg.Connection, category_id: int | None) -> None:
        if category_id is not None and not await conn.fetchval(
                "SELECT 1 FROM categories WHERE category_id = $1", category_id):
            raise ValidationFailed.at("$.category_id", "no such category")

    @staticmethod
    async def _check_seller(conn: asyncpg.Connection, seller_id: int | None) -> None:
        if seller_id is not None and not await conn.fetchval(
                "SELECT 1 FROM users WHERE user_id = $1 AND role IN ('seller', 'admin')",
                seller_id):
            raise ValidationFailed.at("$.seller_id", "no such seller")


def _active_terms(row: Any) -> set[str]:
    """The autocomplete terms a product contributes: only active products count."""
    if row["status"] != "active":
        return set()
    return product_terms(row["name"], row["brand"])
