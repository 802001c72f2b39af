"""Browsing: filters, sorts and paging over active products.

Each sort has a partial index that spells its ORDER BY (migrations/0003_catalog.sql), so a
page is a short index range scan. Page numbers reach the first ``MAX_WINDOW`` results;
every page also returns ``next_cursor``, a keyset position (the last row's sort key) that
pages at constant cost to any depth. A parent category is browsed as a merge of one
ordered scan per descendant category (``LIMIT`` each), never a sort of the whole subtree.
Totals are counted once per filter set and generation (shared cache) and carried in the
cursor, so deep pages do not count again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from catalog.cache import CatalogCache
from catalog.query import MAX_WINDOW, SORTS, Filters, Sort, filter_clauses
from catalog.records import ProductPage
from engine.errors import ValidationFailed
from engine.sql import Params


class Cursor(msgspec.Struct, array_like=True):
    sort: str
    query: str  # digest of the filters it belongs to
    page: int  # the page it opens
    total: int
    key: list[str | int]  # the last row's sort columns; money and times as text


def _digest(filters: Filters) -> str:
    return hashlib.sha256(repr(filters.key()).encode()).hexdigest()[:12]


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(cursor)).decode().rstrip("=")


def decode_cursor(raw: str, sort: Sort, filters: Filters) -> Cursor:
    try:
        cursor = msgspec.msgpack.decode(
            base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), type=Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationFailed.at("query.cursor", "not a cursor this API issued") from None
    if cursor.sort != sort.name or cursor.query != _digest(filters) \
            or len(cursor.key) != len(sort.columns):
        raise ValidationFailed.at("query.cursor", "belongs to another sort or filter set")
    return cursor


def _key_out(value: Any) -> str | int:
    return value if isinstance(value, int) else (
        value.isoformat() if isinstance(value, datetime) else str(value))


def _key_in(columns: tuple[str, ...], key: list[str | int]) -> list[Any]:
    """The cursor's sort key as SQL parameters; a tampered cursor is a 422, not a 500."""
    out: list[Any] = []
    try:
        for column, value in zip(columns, key, strict=True):
            if column in ("price", "rating_avg"):
                amount = Decimal(str(value))
                if not amount.is_finite():
                    raise ValueError(value)
                out.append(amount)
            elif column == "created_at":
                out.append(datetime.fromisoformat(str(value)))
            elif isinstance(value, int) and -2**63 <= value < 2**63:
                out.append(value)
            else:
                raise ValueError(value)
    except (ArithmeticError, ValueError, TypeError):
        raise ValidationFailed.at("query.cursor", "not a cursor this API issued") from None
    return out


class Browse:
    def __init__(self, *, pool: asyncpg.Pool, cache: CatalogCache, products) -> None:
        self._pool = pool
        self._cache = cache
        self._products = products

    async def page(self, filters: Filters, *, sort: str, page: int, page_size: int,
                   cursor: str | None = None) -> ProductPage:
        order = SORTS[sort]
        after: Cursor | None = decode_cursor(cursor, order, filters) if cursor else None
        if after is None and page * page_size > MAX_WINDOW:
            raise ValidationFailed.at(
                "query.page", f"pages reach the first {MAX_WINDOW} results; "
                              "follow next_cursor to go deeper")
        if filters.categories == ():
            return ProductPage(items=[], page=page, page_size=page_size, total=0)
        if after is not None:
            page, total = after.page, after.total
        else:
            total = await self._cache.result("count", filters.key(), int,
                                             lambda: self._count(filters))
        offset = 0 if after is not None else (page - 1) * page_size
        # One row more than the page tells whether another page exists.
        rows = await self._pool.fetch(*self._page_sql(filters, order, offset, page_size + 1,
                                                      _key_in(order.columns, after.key)
                                                      if after else None))
        more, rows = len(rows) > page_size, rows[:page_size]
        items = await self._products.load_many([r["product_id"] for r in rows])
        next_cursor = None
        if more:
            next_cursor = encode_cursor(Cursor(
                sort=order.name, query=_digest(filters), page=page + 1, total=total,
                key=[_key_out(rows[-1][c]) for c in order.columns]))
        return ProductPage(items=items, page=page, page_size=page_size, total=total,
                           next_cursor=next_cursor)

    async def _count(self, filters: Filters) -> int:
        arg = Params()
        where = " AND ".join(filter_clauses(filters, arg))
        return await self._pool.fetchval(f"SELECT count(*) FROM products p WHERE {where}",
                                         *arg.values)

    @staticmethod
    def _page_sql(filters: Filters, order: Sort, offset: int, limit: int,
                  after: list | None) -> tuple:
        arg = Params()
        cols = ", ".join(f"p.{c}" for c in order.columns)
        order_by = order.order_by()
        merge = filters.categories is not None and len(filters.categories) > 1
        # The category condition moves into the per-category scan when merging.
        where = filter_clauses(filters, arg, skip="category" if merge else "")
        if after is not None:
            marks = ", ".join(arg(v) for v in after)
            where.append(f"({cols}) {'<' if order.descending else '>'} ({marks})")
        if not merge:
            sql = (f"SELECT {cols} FROM products p WHERE {' AND '.join(where)}"
                   f" ORDER BY {order_by} LIMIT {arg(limit)} OFFSET {arg(offset)}")
            return (sql, *arg.values)
        categories = arg(list(filters.categories or ()), "::bigint[]")
        window = arg(offset + limit)
        sql = (f"SELECT p.* FROM unnest({categories}) AS c(category_id)"
               f" CROSS JOIN LATERAL (SELECT {cols} FROM products p"
               f" WHERE p.category_id = c.category_id AND {' AND '.join(where)}"
               f" ORDER BY {order_by} LIMIT {window}) p"
               f" ORDER BY {order_by} LIMIT {arg(limit)} OFFSET {arg(offset)}")
        return (sql, *arg.values)
