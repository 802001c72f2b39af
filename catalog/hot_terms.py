"""Very common search words: counted in cells, ranked by a bound, never read one by one.

A cold search for a word held by ~70k of 1M products spent its time fetching those rows
at random from the wide products heap (about 47k pages for "black"), then scoring and
counting each. For the lexemes of the most frequent words (migrations/0017_discovery.sql):

* facets and the total come from ``search_hot_cells``: the word's products counted per
  (brand, category, price bucket, star floor), with each cell's price and rating range.
  Brand and category filters select whole cells; a price or rating filter does too
  whenever no cell straddles its bound, which the ranges tell. The disjunctive counts
  are then sums over a few thousand cells, the same numbers as counting the rows. When a
  cell does straddle a bound, ``search`` returns None and the caller counts the word's
  rows (``search_hot_hits``, still far cheaper than the heap).
* the page of a relevance search is ranked exactly without scoring every row: a row's
  score is ``static`` (text rank x rating factor, stored) x recency, which only falls
  with age, so a row created in month m scores at most ``static`` x recency(end of m).
  The first ``offset + limit`` matching rows of each month by ``static`` (index walks)
  give a score S that the page's last row reaches at least; then only the rows of each
  month with ``static`` >= S / recency(end of that month) can be on the page, and only
  they are scored and sorted (one index range per month; hundreds of rows instead of
  70k). Other sorts sort the word's narrow rows.

Rows and cells follow product writes through a trigger in the same transaction; which
lexemes are hot is chosen by ``rebuild`` (the seed calls it after a bulk load). What it
costs: at 1M products (71 lexemes over 20,000 products each) 2.7M rows and 0.2M cells,
about 0.9 GB with their indexes, and a few row writes per product insert or listing change.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from catalog.query import SEARCH_SORTS, Filters, filter_parts
from catalog.relevance import RECENCY_FACTOR
from engine.sql import Params

HOT_MIN_PRODUCTS = 20_000  # a word used by at least this many products gets its own rows
# GROUPING(brand, category_id, bucket, stars) of the grand total, as in catalog/search.py
_ALL = 0b1111


async def hot_lexeme(conn: asyncpg.Connection, text: str, config: str) -> str | None:
    """The hot lexeme ``text`` parses to alone, or None (several words, operators, or a
    word that is not hot)."""
    return await conn.fetchval(
        "SELECT lexeme FROM search_hot_terms"
        " WHERE query = websearch_to_tsquery($1::regconfig, $2)", config, text)


async def rebuild(conn: asyncpg.Connection, *, min_products: int = HOT_MIN_PRODUCTS) -> int:
    """Choose the hot lexemes afresh and fill their rows and cells; returns how many."""
    hot = await conn.fetchval("SELECT search_hot_terms_rebuild($1)", min_products)
    await conn.execute("ANALYZE search_hot_hits, search_hot_cells")
    return hot


async def search(conn: asyncpg.Connection, lexeme: str, f: Filters, sort: str, offset: int,
                 limit: int) -> list[Any] | None:
    """The rows catalog/search.py reads of its statement (facet rows, part 0; the page's
    ids, part 1), or None when a price or rating bound splits a cell."""
    # Small index ranges: a parallel plan only adds its start-up.
    await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    facet_sql, facet_args = _cells_statement(lexeme, f)
    facet_rows = await conn.fetch(facet_sql, *facet_args)
    if any(r["straddles"] for r in facet_rows if r["grp"] == _ALL):
        return None
    if not next((r["n_all"] for r in facet_rows if r["grp"] == _ALL), 0):
        return list(facet_rows)
    page_sql, page_args = _page_statement(lexeme, f, sort, offset, limit)
    ids = await conn.fetch(page_sql, *page_args)
    return [*facet_rows, *({"part": 1, "product_id": r["product_id"]} for r in ids)]


def _row_filters(f: Filters, arg: Params) -> list[str]:
    return [c for conditions in filter_parts(f, arg).values() for c in conditions]


def _all(conditions: list[str]) -> str:
    return "(" + " AND ".join(conditions) + ")" if conditions else "true"


def _cells_statement(lexeme: str, f: Filters) -> tuple[str, list]:
    """Facet counts as sums over cells, in the shape of the search statement's facet
    rows, plus whether any cell straddles a price or rating bound."""
    arg = Params()
    fb = _all([f"p.brand = ANY({arg(list(f.brands), '::text[]')})"] if f.brands else [])
    fc = _all([f"p.category_id = ANY({arg(list(f.categories), '::bigint[]')})"]
              if f.categories is not None else [])
    inside, outside = [], []  # a cell wholly inside, or wholly outside, a bound
    if f.price_min is not None:
        bound = arg(f.price_min)
        inside.append(f"p.min_price >= {bound}")
        outside.append(f"p.max_price < {bound}")
    if f.price_max is not None:
        bound = arg(f.price_max)
        inside.append(f"p.max_price <= {bound}")
        outside.append(f"p.min_price > {bound}")
    fp, price_out = _all(inside), " OR ".join(outside) or "false"
    inside, outside = [], []
    if f.rating_min is not None:
        bound = arg(f.rating_min)
        inside.append(f"p.min_rating >= {bound}")
        outside.append(f"p.max_rating < {bound}")
    fr, rating_out = _all(inside), " OR ".join(outside) or "false"
    sql = f"""
WITH cells AS MATERIALIZED (
    SELECT p.brand, p.category_id, p.bucket, p.stars, p.products AS n,
           {fb} AS fb, {fc} AS fc, {fp} AS fp, {fr} AS fr,
           NOT ({fp} OR {price_out}) OR NOT ({fr} OR {rating_out}) AS straddles
    FROM search_hot_cells p WHERE p.lexeme = {arg(lexeme)} AND p.products > 0
)
SELECT 0 AS part, brand, category_id, bucket, stars,
       GROUPING(brand, category_id, bucket, stars) AS grp,
       coalesce(sum(n) FILTER (WHERE fc AND fp AND fr), 0) AS n_brand,
       coalesce(sum(n) FILTER (WHERE fb AND fp AND fr), 0) AS n_category,
       coalesce(sum(n) FILTER (WHERE fb AND fc AND fr), 0) AS n_price,
       coalesce(sum(n) FILTER (WHERE fb AND fc AND fp), 0) AS n_rating,
       coalesce(sum(n) FILTER (WHERE fb AND fc AND fp AND fr), 0) AS n_all,
       coalesce(bool_or(straddles), false) AS straddles
FROM cells
WHERE (NOT fb)::int + (NOT fc)::int + (NOT fp)::int + (NOT fr)::int <= 1 OR straddles
GROUP BY GROUPING SETS ((brand), (category_id), (bucket), (stars), ())"""
    return sql, arg.values


def _page_statement(lexeme: str, f: Filters, sort: str, offset: int, limit: int
                    ) -> tuple[str, list]:
    arg = Params()
    where = " AND ".join([f"p.lexeme = {arg(lexeme)}", *_row_filters(f, arg)])
    if sort != "relevance":
        return (f"SELECT p.product_id FROM search_hot_hits p WHERE {where}"
                f" ORDER BY {SEARCH_SORTS[sort].order_by()}"
                f" LIMIT {arg(limit)} OFFSET {arg(offset)}",
                arg.values)
    window = arg(offset + limit)
    score = f"p.static * {RECENCY_FACTOR}"
    # The most a row of month m can get from recency: the factor at the month's end.
    month_cap = ("(1 + 0.2 / (1 + greatest(date_part('epoch', now()"
                 " - ((m.month + interval '1 month') AT TIME ZONE 'UTC')), 0) / 2592000))")
    lexeme_arg = arg(lexeme)
    # The bound is loosened by a hair so float rounding never drops a tying row.
    sql = f"""
WITH months AS MATERIALIZED (
    SELECT g::date AS month FROM generate_series(
        (SELECT min(month) FROM search_hot_hits WHERE lexeme = {lexeme_arg}),
        (SELECT max(month) FROM search_hot_hits WHERE lexeme = {lexeme_arg}),
        interval '1 month') g
), seed AS (
    SELECT s.* FROM months m, LATERAL (
        SELECT p.static, p.created_at FROM search_hot_hits p
        WHERE {where} AND p.month = m.month ORDER BY p.static DESC LIMIT {window}) s
), bound AS (
    SELECT CASE WHEN count(*) < {window} THEN 0 ELSE min(score) END AS score
    FROM (SELECT {score} AS score FROM seed p ORDER BY 1 DESC LIMIT {window}) s
), candidates AS MATERIALIZED (
    SELECT c.* FROM months m, LATERAL (
        SELECT p.product_id, p.static, p.created_at FROM search_hot_hits p
        WHERE {where} AND p.month = m.month
          AND p.static >= (SELECT score FROM bound) / {month_cap} * (1 - 1e-9)
        OFFSET 0) c  -- kept a per-month index range, not flattened into a join
)
SELECT p.product_id FROM candidates p
ORDER BY {score} DESC, p.product_id DESC LIMIT {arg(limit)} OFFSET {arg(offset)}"""
    return sql, arg.values
