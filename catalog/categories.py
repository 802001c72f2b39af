"""The category tree. Products sit in any category; filtering by a category includes its
descendants (a shopper in "Electronics" sees the laptops of "Laptops")."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from catalog.cache import CatalogCache
from catalog.records import Category
from engine.errors import REDIS_DOWN, Conflict, ValidationFailed


class CategoryTree(msgspec.Struct, frozen=True):
    rows: list[tuple[int, str, int | None]]  # id, name, parent id

    def children_of(self) -> dict[int | None, list[int]]:
        children: dict[int | None, list[int]] = {}
        for category_id, _, parent_id in self.rows:
            children.setdefault(parent_id, []).append(category_id)
        return children

    def names(self) -> dict[int, str]:
        return {category_id: name for category_id, name, _ in self.rows}


class Categories:
    def __init__(self, *, pool: asyncpg.Pool, cache: CatalogCache) -> None:
        self._pool = pool
        self._cache = cache
        # The tree of the current catalog generation, kept in-process: it is read by every
        # browse and search with a category filter.
        self._tree: tuple[int, CategoryTree] | None = None

    async def create(self, *, name: str, parent_id: int | None) -> Category:
        if not name.strip():
            raise ValidationFailed.at("$.name", "must not be blank")
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
        await self._cache.changed(listings=True)
        return Category(**dict(row))

    async def current(self) -> CategoryTree:
        generation = await self._safe_generation()
        if self._tree is not None and self._tree[0] == generation:
            return self._tree[1]
        rows = await self._pool.fetch(
            "SELECT category_id, name, parent_id FROM categories ORDER BY name, category_id")
        tree = CategoryTree([(r["category_id"], r["name"], r["parent_id"]) for r in rows])
        self._tree = (generation, tree)
        return tree

    async def _safe_generation(self) -> int:
        try:
            return await self._cache.generation()
        except REDIS_DOWN:  # -1 matches no kept tree: read it afresh while Redis is down
            return -1

    async def tree(self) -> list[Category]:
        tree = await self.current()
        nodes: dict[int, dict[str, Any]] = {
            cid: {"category_id": cid, "name": name, "parent_id": parent, "children": []}
            for cid, name, parent in tree.rows}
        roots = []
        for node in nodes.values():
            parent = nodes.get(node["parent_id"])
            (parent["children"] if parent else roots).append(node)
        return msgspec.convert(roots, list[Category])

    async def expand(self, category_ids: list[int]) -> list[int] | None:
        """The given categories and all their descendants, sorted; None when one of them
        does not exist (the caller answers with an empty result)."""
        tree = await self.current()
        names = tree.names()
        if any(cid not in names for cid in category_ids):
            return None
        children = tree.children_of()
        found: set[int] = set()
        stack = list(category_ids)
        while stack:
            cid = stack.pop()
            if cid not in found:
                found.add(cid)
                stack.extend(children.get(cid, ()))
        return sorted(found)

    async def names(self) -> dict[int, str]:
        return (await self.current()).names()
