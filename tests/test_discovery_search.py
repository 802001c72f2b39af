"""Very common words served from search_hot_hits: the same results, totals and facet counts
as the products heap gives, for generated queries, and still after product writes."""

from __future__ import annotations

import random
from decimal import Decimal

import asyncpg
import pytest

from catalog import hot_terms
from catalog.query import TEXT_CONFIG, Filters
from catalog.search import PRICE_EDGES, Search, _statement
from tests import test_catalog as reference
from tests.orders_support import services_of
from tests.test_catalog_data import BRANDS, load_catalog

HOT_MIN = 20  # of the test catalog's 150 products: colours, brands and nouns get hot


@pytest.fixture
async def catalog(pool):
    loaded = await load_catalog(pool)
    async with pool.acquire() as conn:
        assert await hot_terms.rebuild(conn, min_products=HOT_MIN) > 5
    return loaded


# The exact-answer tests of the catalog, run again with the very common words hot.
test_hot_search_facets_are_disjunctive_and_exact = \
    reference.test_search_facets_are_disjunctive_and_exact
test_hot_search_sorts_and_paging = reference.test_search_sorts_and_paging
test_hot_relevance_puts_name_matches_above_description_matches = \
    reference.test_relevance_puts_name_matches_above_description_matches


async def _heap_and_hot_rows(conn: asyncpg.Connection, text: str, f: Filters, sort: str,
                             page: int) -> tuple[tuple, tuple]:
    """The search statement over the heap and over the word's rows (the path taken when
    a filter bound splits a cell)."""
    hot = await hot_terms.hot_lexeme(conn, text, TEXT_CONFIG)
    assert hot is not None, text
    answers = []
    for lexeme in (None, hot):
        sql, args = _statement(text, f, sort, (page - 1) * 10, 10, hot_lexeme=lexeme)
        rows = [tuple(r.values()) for r in await conn.fetch(sql, *args)]
        answers.append((sorted((r for r in rows if r[0] == 0), key=repr),
                        [r for r in rows if r[0] == 1]))
    return answers[0], answers[1]


def _searches(api) -> tuple[Search, Search]:
    svc = services_of(api)
    return tuple(Search(pool=svc.pool, cache=svc.catalog_cache, products=svc.products,
                        suggestions=svc.suggestions, categories=svc.categories,
                        hot_words=hot) for hot in (False, True))


def _filters(rng: random.Random, catalog) -> Filters:
    cats = list(catalog.categories.values())
    price_min = Decimal(rng.randrange(0, 200_000)) / 100 if rng.random() < 0.4 else None
    price_max = (Decimal(rng.randrange(0, 300_000)) / 100 if rng.random() < 0.4 else None)
    if price_min is not None and price_max is not None and price_min > price_max:
        price_min, price_max = price_max, price_min
    return Filters(
        categories=(tuple(sorted(catalog.subtree(rng.choice(cats))))
                    if rng.random() < 0.3 else None),
        brands=tuple(sorted(rng.sample(BRANDS, rng.randint(1, 3)))) if rng.random() < 0.4
        else (),
        price_min=price_min, price_max=price_max,
        rating_min=Decimal(rng.randrange(0, 50)) / 10 if rng.random() < 0.3 else None)


async def test_hot_rows_answer_like_the_heap_for_generated_queries_and_after_writes(
        api, pool, catalog) -> None:
    rng = random.Random(17)
    async with pool.acquire() as conn:
        hot_words = [r["lexeme"] for r in await conn.fetch(
            "SELECT lexeme FROM search_hot_terms ORDER BY lexeme")]
    spellings = {"black": "Black", "laptop": "LAPTOPS", "silver": "  silver "}

    heap_search, hot_search = _searches(api)
    paths = {"cells": 0, "rows": 0}

    async def compare(rounds: int) -> None:
        async with pool.acquire() as conn:
            for _ in range(rounds):
                word = rng.choice(hot_words)
                text = spellings.get(word, word) if rng.random() < 0.5 else word
                f = _filters(rng, catalog)
                sort = rng.choice(("relevance", "price_asc", "price_desc", "rating", "newest"))
                page = rng.randint(1, 3)
                heap, hot = await _heap_and_hot_rows(conn, text, f, sort, page)
                assert hot == heap, (text, f, sort)
                want = await heap_search._compute(text, f, sort, page, 10)
                got = await hot_search._compute(text, f, sort, page, 10)
                assert got == want, (text, f, sort, page)
                cells = await hot_terms.search(
                    conn, await hot_terms.hot_lexeme(conn, text, TEXT_CONFIG), f, sort,
                    (page - 1) * 10, 10)
                paths["rows" if cells is None else "cells"] += 1

    await compare(60)
    # Writes through the service and behind its back: the trigger keeps the rows.
    items = [i for i in catalog.items if i.status == "active"]
    for item in rng.sample(items, 6):
        await api.call("PATCH", f"/api/v1/seller/products/{item.product_id}",
                       headers=api.admin, json={"price": f"{rng.randint(1, 3000)}.00"},
                       expect=200)
    await api.call("PATCH", f"/api/v1/seller/products/{items[0].product_id}",
                   headers=api.admin, json={"status": "archived"}, expect=200)
    await api.call("PATCH", f"/api/v1/seller/products/{items[1].product_id}",
                   headers=api.admin, json={"name": "Plain Thing", "brand": "Other"},
                   expect=200)
    await api.call("PATCH", f"/api/v1/seller/products/{items[2].product_id}",
                   headers=api.admin, json={"description": "now black and silver"},
                   expect=200)
    await pool.execute("UPDATE products SET rating_avg = 4.5, rating_count = rating_count + 3,"
                       " rating_sum = rating_sum + 15"
                       " WHERE product_id = $1", items[3].product_id)
    for n in range(4):
        await api.call("POST", "/api/v1/seller/products", headers=api.admin, expect=201,
                       json={"name": f"Black Laptop {n}", "price": "99.00", "brand": "Dell"})
    await compare(40)
    assert min(paths.values()) >= 10, paths  # both ways of answering were exercised


async def test_only_a_single_hot_lexeme_takes_the_hot_path(pool, catalog) -> None:
    async with pool.acquire() as conn:
        assert await hot_terms.hot_lexeme(conn, "black", TEXT_CONFIG) == "black"
        assert await hot_terms.hot_lexeme(conn, "Laptops", TEXT_CONFIG) == "laptop"
        for text in ("black laptop", "black or silver", "-black", '"black laptop"',
                     "gadget", "zzzz", "the"):
            assert await hot_terms.hot_lexeme(conn, text, TEXT_CONFIG) is None, text


async def test_price_buckets_of_the_cells_are_the_facet_buckets(pool) -> None:
    rng = random.Random(5)
    prices = [*PRICE_EDGES, *(e - Decimal("0.01") for e in PRICE_EDGES), Decimal(0),
              *(Decimal(rng.randrange(0, 1_000_000)) / 100 for _ in range(200))]
    rows = await pool.fetch(
        "SELECT search_price_bucket(x) AS cell, width_bucket(x, $2::numeric[]) AS facet"
        " FROM unnest($1::numeric[]) x", prices, list(PRICE_EDGES))
    assert all(r["cell"] == r["facet"] for r in rows)
