"""What a catalog query is made of, shared by browse (listing.py) and search (search.py):
the filters a shopper chose, their SQL conditions, and the one table of sorts.

Conditions take their placeholders from an ``engine.sql.Params``, so a caller composes
them with its own parts in any order. Search counts each facet with every filter except
its own, so the conditions come per facet (``filter_parts``); browse joins them all
(``filter_clauses``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from engine.sql import Params

MAX_WINDOW = 10_000  # deepest result reachable by page number (as search engines do)
# The text search configuration of products.search_vector (migrations/0003_catalog.sql):
# a query parsed with another one would not match what was indexed (a test checks both).
TEXT_CONFIG = "english"
FACETS = ("category", "brand", "price", "rating")


@dataclass(frozen=True, slots=True)
class Sort:
    name: str
    columns: tuple[str, ...]  # all in one direction, the last is product_id
    descending: bool

    def order_by(self, alias: str = "") -> str:
        direction = "DESC" if self.descending else "ASC"
        return ", ".join(f"{alias}{c} {direction}" for c in self.columns)


# Browse sorts: each has a partial index that spells its ORDER BY (0003_catalog.sql).
SORTS = {
    "newest": Sort("newest", ("created_at", "product_id"), True),
    "price_asc": Sort("price_asc", ("price", "product_id"), False),
    "price_desc": Sort("price_desc", ("price", "product_id"), True),
    "rating": Sort("rating", ("rating_avg", "rating_count", "product_id"), True),
}
# Search sorts its matches in memory, by the text rank too (``score``, search.py).
SEARCH_SORTS = {"relevance": Sort("relevance", ("score", "product_id"), True), **SORTS}


@dataclass(frozen=True, slots=True)
class Filters:
    """What a shopper narrowed the catalog to. ``categories`` is already expanded to
    descendants; None means any category."""
    categories: tuple[int, ...] | None = None
    brands: tuple[str, ...] = ()
    price_min: Decimal | None = None
    price_max: Decimal | None = None
    rating_min: Decimal | None = None

    def key(self) -> tuple:
        return (self.categories, self.brands, str(self.price_min), str(self.price_max),
                str(self.rating_min))


def filter_parts(f: Filters, arg: Params, *, skip: str = "", alias: str = "p"
                 ) -> dict[str, list[str]]:
    """The SQL conditions of ``f`` per facet (FACETS; a facet not filtered, or the one
    to ``skip``, has none)."""
    parts: dict[str, list[str]] = {facet: [] for facet in FACETS}
    if f.categories is not None and skip != "category":
        parts["category"].append(_any_of(f"{alias}.category_id", f.categories, "bigint", arg))
    if f.brands and skip != "brand":
        parts["brand"].append(_any_of(f"{alias}.brand", f.brands, "text", arg))
    if skip != "price":
        if f.price_min is not None:
            parts["price"].append(f"{alias}.price >= {arg(f.price_min)}")
        if f.price_max is not None:
            parts["price"].append(f"{alias}.price <= {arg(f.price_max)}")
    if f.rating_min is not None and skip != "rating":
        parts["rating"].append(f"{alias}.rating_avg >= {arg(f.rating_min)}")
    return parts


def filter_clauses(f: Filters, arg: Params, *, skip: str = "", alias: str = "p"
                   ) -> list[str]:
    """SQL conditions for active products matching ``f`` (``skip`` one of FACETS)."""
    parts = filter_parts(f, arg, skip=skip, alias=alias)
    return [f"{alias}.status = 'active'", *(c for facet in FACETS for c in parts[facet])]


def _any_of(column: str, values: tuple, sql_type: str, arg: Params) -> str:
    # One value is spelled `=`: with `= ANY(array)` the planner cannot see that a single
    # (category_id, price) index range is ordered and sorts the whole category instead.
    if len(values) == 1:
        return f"{column} = {arg(values[0], '::' + sql_type)}"
    return f"{column} = ANY({arg(list(values), '::' + sql_type + '[]')})"
