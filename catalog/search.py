"""Full-text search in Postgres with disjunctive facets.

The query is parsed by ``websearch_to_tsquery`` (quotes, ``or``, ``-word``; it accepts any
text, so hostile input cannot make a syntax error) and matched against the weighted
``search_vector`` (name A, brand B, description C) through its GIN index.

One statement reads the matching rows once: the hits are materialised with a flag per
filter, the facets are counted over them with GROUPING SETS, and the requested page is
cut from the same hits. Facets are *disjunctive*: each facet's counts apply every filter
except its own (choosing a brand keeps the other brands' counts visible, so a shopper can
widen the choice), while ``total`` and the items apply all filters.

Relevance = text rank x rating factor x recency factor (catalog/relevance.py); ties go to
the newer product. A query that is exactly one very common word is answered from rows
kept for that word (catalog/hot_terms.py), with the same results and counts.

The result (total, facets, page ids) is shared through the result cache; the items are
always read fresh, so a cached search never shows an old price or stock figure.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import msgspec

from catalog import hot_terms, relevance
from catalog.cache import CatalogCache
from catalog.query import MAX_WINDOW, SEARCH_SORTS, TEXT_CONFIG, Filters, filter_parts
from catalog.records import Facets, FacetValue, PriceBucket, RatingBucket, SearchPage
from catalog.suggest import Suggestions
from engine.errors import ValidationFailed
from engine.sql import Params

PRICE_EDGES = tuple(Decimal(e) for e in (25, 50, 100, 250, 500, 1000, 2500))
RATING_FLOORS = (4, 3, 2, 1)
FACET_SIZE = 20

# GROUPING(brand, category_id, bucket, stars) of each grouping set.
_BY_BRAND, _BY_CATEGORY, _BY_PRICE, _BY_RATING, _ALL = 0b0111, 0b1011, 0b1101, 0b1110, 0b1111


class SearchResult(msgspec.Struct, array_like=True):
    total: int
    ids: list[int]
    facets: Facets
    did_you_mean: str | None = None


def normalize(q: str) -> str:
    """The query as matched: case and spacing do not change what websearch finds."""
    return " ".join(q.lower().split())


class Search:
    def __init__(self, *, pool: asyncpg.Pool, cache: CatalogCache, products,
                 suggestions: Suggestions, categories, hot_words: bool = True) -> None:
        self._pool = pool
        self._hot_words = hot_words  # False: every query reads the products heap
        self._cache = cache
        self._products = products
        self._suggestions = suggestions
        self._categories = categories

    async def search(self, q: str, filters: Filters, *, sort: str, page: int,
                     page_size: int) -> SearchPage:
        text = normalize(q)
        if not text:
            raise ValidationFailed.at("query.q", "must not be blank")
        if page * page_size > MAX_WINDOW:
            raise ValidationFailed.at("query.page", f"pages reach the first {MAX_WINDOW} results")
        result = await self._cache.result(
            "search", (text, filters.key(), sort, page, page_size), SearchResult,
            lambda: self._compute(text, filters, sort, page, page_size))
        items = await self._products.load_many(result.ids)
        return SearchPage(items=items, total=result.total, page=page, page_size=page_size,
                          facets=result.facets, did_you_mean=result.did_you_mean)

    async def _compute(self, text: str, filters: Filters, sort: str, page: int,
                       page_size: int) -> SearchResult:
        if filters.categories == ():  # an unknown category matches nothing
            return SearchResult(total=0, ids=[], facets=Facets([], [], [], []))
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            # A big match set is aggregated in memory; JIT compiles for longer than these
            # queries run.
            await conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
            hot = (await hot_terms.hot_lexeme(conn, text, TEXT_CONFIG)
                   if self._hot_words else None)
            rows = None
            if hot is not None:  # None again when a price or rating filter splits a cell
                rows = await hot_terms.search(conn, hot, filters, sort,
                                              (page - 1) * page_size, page_size)
            if rows is None:
                sql, args = _statement(text, filters, sort, (page - 1) * page_size, page_size,
                                       hot_lexeme=hot)
                rows = await conn.fetch(sql, *args)
        facet_rows = [r for r in rows if r["part"] == 0]
        ids = [r["product_id"] for r in rows if r["part"] == 1]
        total = next((r["n_all"] for r in facet_rows if r["grp"] == _ALL), 0)
        facets = await self._facets(facet_rows, filters)
        hint = await self._suggestions.did_you_mean(text) if total == 0 else None
        return SearchResult(total=total, ids=ids, facets=facets, did_you_mean=hint)

    async def _facets(self, rows: list[asyncpg.Record], filters: Filters) -> Facets:
        brands = sorted(((r["brand"], r["n_brand"]) for r in rows
                         if r["grp"] == _BY_BRAND and r["n_brand"]),
                        key=lambda bc: (-bc[1], bc[0]))
        categories = sorted(((r["category_id"], r["n_category"]) for r in rows
                             if r["grp"] == _BY_CATEGORY and r["n_category"]
                             and r["category_id"] is not None),
                            key=lambda cc: (-cc[1], cc[0]))
        names = await self._categories.names() if categories else {}
        by_bucket = {r["bucket"]: r["n_price"] for r in rows if r["grp"] == _BY_PRICE}
        by_stars = {r["stars"]: r["n_rating"] for r in rows if r["grp"] == _BY_RATING}
        edges = (Decimal(0), *PRICE_EDGES, None)
        price = [PriceBucket(min=edges[b], max=edges[b + 1], count=n)
                 for b, n in sorted(by_bucket.items()) if n and b is not None]
        rating = [RatingBucket(min=floor, count=n) for floor in RATING_FLOORS
                  if (n := sum(c for s, c in by_stars.items() if s is not None and s >= floor))]
        return Facets(
            brand=_top([FacetValue(value=b, count=n) for b, n in brands], filters.brands),
            category=_top([FacetValue(value=c, count=n, name=names.get(c))
                           for c, n in categories], ()),
            price=price, rating=rating)


def _top(values: list[FacetValue], chosen: tuple) -> list[FacetValue]:
    """The FACET_SIZE largest values, plus any chosen value that fell outside them (a
    shopper always sees the values they picked)."""
    top = values[:FACET_SIZE]
    shown = {v.value for v in top}
    return top + [v for v in values[FACET_SIZE:] if v.value in chosen and v.value not in shown]


def _flag(conditions: list[str]) -> str:
    return "(" + " AND ".join(conditions) + ")" if conditions else "true"


def _statement(text: str, f: Filters, sort: str, offset: int, limit: int, *,
               hot_lexeme: str | None = None) -> tuple[str, list]:
    """The search statement; with ``hot_lexeme`` (the query is that one very common
    lexeme) the hits come from its rows in ``search_hot_hits`` (same columns, the static
    part of the score stored) instead of from the products heap."""
    arg = Params()
    by = filter_parts(f, arg)
    if hot_lexeme is None:
        query = f"websearch_to_tsquery('{TEXT_CONFIG}', {arg(text)})"
        source = (f"products p, {query} AS query"
                  " WHERE p.search_vector @@ query AND p.status = 'active'")
        score = relevance.score("ts_rank(p.search_vector, query)")
    else:
        source = f"search_hot_hits p WHERE p.lexeme = {arg(hot_lexeme)}"
        score = f"p.static * {relevance.RECENCY_FACTOR}"
    if sort != "relevance":
        score = "0::float8"
    edges = arg(list(PRICE_EDGES), "::numeric[]")
    sql = f"""
WITH hits AS MATERIALIZED (
    SELECT p.product_id, p.brand, p.category_id, p.price, p.rating_avg, p.rating_count,
           p.created_at, {score} AS score,
           {_flag(by["brand"])} AS fb, {_flag(by["category"])} AS fc,
           {_flag(by["price"])} AS fp, {_flag(by["rating"])} AS fr
    FROM {source}
)
SELECT 0 AS part, brand, category_id, bucket, stars,
       GROUPING(brand, category_id, bucket, stars) AS grp,
       count(*) FILTER (WHERE fc AND fp AND fr) AS n_brand,
       count(*) FILTER (WHERE fb AND fp AND fr) AS n_category,
       count(*) FILTER (WHERE fb AND fc AND fr) AS n_price,
       count(*) FILTER (WHERE fb AND fc AND fp) AS n_rating,
       count(*) FILTER (WHERE fb AND fc AND fp AND fr) AS n_all,
       NULL::bigint AS product_id
FROM (SELECT *, width_bucket(price, {edges}) AS bucket, floor(rating_avg)::int AS stars
      FROM hits
      -- a row failing two filters counts in no facet
      WHERE (NOT fb)::int + (NOT fc)::int + (NOT fp)::int + (NOT fr)::int <= 1) h
GROUP BY GROUPING SETS ((brand), (category_id), (bucket), (stars), ())
UNION ALL
(SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, product_id
 FROM hits WHERE fb AND fc AND fp AND fr
 ORDER BY {SEARCH_SORTS[sort].order_by()} LIMIT {arg(limit)} OFFSET {arg(offset)})"""
    return sql, arg.values
