"""Products and their stock, with seller scoping (an admin acts for any seller)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from engine.errors import Conflict, NotFound, ValidationFailed

PRODUCT_COLUMNS = """p.product_id, p.seller_id, p.name, p.description, p.brand, p.category_id,
    p.price, p.currency, p.rating_avg, p.rating_count, coalesce(i.available_qty, 0)
    AS available_qty, p.status, p.created_at"""

_EDITABLE = ("name", "description", "brand", "category_id", "price", "status")


class Products:
    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, product_id: int) -> dict[str, Any]:
        row = await self._pool.fetchrow(
            f"SELECT {PRODUCT_COLUMNS} FROM products p"
            " LEFT JOIN inventory i USING (product_id) WHERE p.product_id = $1", product_id)
        if row is None:
            raise NotFound("No such product.")
        return dict(row)

    async def create(self, *, seller_id: int, name: str, description: str, brand: str,
                     category_id: int | None, price: Decimal, currency: str,
                     available_qty: int) -> dict[str, Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._check_category(conn, category_id)
            product_id = await conn.fetchval(
                "INSERT INTO products (seller_id, name, description, brand, category_id, price,"
                " currency) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING product_id",
                seller_id, name, description, brand, category_id, price, currency)
            await conn.execute(
                "INSERT INTO inventory (product_id, available_qty) VALUES ($1, $2)",
                product_id, available_qty)
        return await self.get(product_id)

    async def owned(self, conn: asyncpg.Connection, product_id: int, seller_id: int | None,
                    *, lock: bool = False) -> None:
        """404 unless the product exists and (when ``seller_id`` is given) is that seller's."""
        sql = "SELECT seller_id FROM products WHERE product_id = $1" + (
            " FOR UPDATE" if lock else "")
        owner = await conn.fetchrow(sql, product_id)
        if owner is None or (seller_id is not None and owner["seller_id"] != seller_id):
            raise NotFound("No such product.")

    async def update(self, product_id: int, *, seller_id: int | None,
                     changes: dict[str, Any]) -> dict[str, Any]:
        changes = {k: v for k, v in changes.items() if k in _EDITABLE}
        async with self._pool.acquire() as conn, conn.transaction():
            await self.owned(conn, product_id, seller_id, lock=True)
            if "category_id" in changes:
                await self._check_category(conn, changes["category_id"])
            if changes:
                sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
                await conn.execute(
                    f"UPDATE products SET {sets}, updated_at = now() WHERE product_id = $1",
                    product_id, *changes.values())
        return await self.get(product_id)

    async def set_stock(self, product_id: int, *, seller_id: int | None,
                        available_qty: int) -> dict[str, Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            await self.owned(conn, product_id, seller_id)
            row = await conn.fetchrow(
                "INSERT INTO inventory (product_id, available_qty) VALUES ($1, $2)"
                " ON CONFLICT (product_id) DO UPDATE SET available_qty = EXCLUDED.available_qty,"
                " version = inventory.version + 1, updated_at = now()"
                " RETURNING product_id, available_qty, reserved_qty", product_id, available_qty)
        return dict(row)

    @staticmethod
    async def _check_category(conn: asyncpg.Connection, category_id: int | None) -> None:
        if category_id is not None and not await conn.fetchval(
                "SELECT 1 FROM categories WHERE category_id = $1", category_id):
            raise ValidationFailed.at("$.category_id", "no such category")


class Categories:
    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, *, name: str, parent_id: int | None) -> dict[str, Any]:
        async with self._pool.acquire() as conn:
            if parent_id is not None and not await conn.fetchval(
                    "SELECT 1 FROM categories WHERE category_id = $1", parent_id):
                raise ValidationFailed.at("$.parent_id", "no such category")
            try:
                row = await conn.fetchrow(
                    "INSERT INTO categories (name, parent_id) VALUES ($1, $2)"
                    " RETURNING category_id, name, parent_id", name.strip(), parent_id)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict("A category with this name already exists there.") from exc
        return dict(row)

    async def tree(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT category_id, name, parent_id FROM categories ORDER BY name, category_id")
        nodes = {r["category_id"]: {**dict(r), "children": []} for r in rows}
        roots = []
        for node in nodes.values():
            parent = nodes.get(node["parent_id"])
            (parent["children"] if parent else roots).append(node)
        return roots
