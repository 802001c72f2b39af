"""Very common search words, served from rows clustered by word.

A cold search for a word held by ~70k of 1M products spent most of its time fetching
those rows one by one from the wide products heap (about 47k random pages for "black").
For the lexemes of the most frequent words, ``search_hot_hits`` keeps, contiguous per
lexeme, what a search reads of each active product holding it: the stored text rank (the
``ts_rank`` of the product's document against the one-lexeme query, which depends on the
document only) and the facet, filter and sort columns. A query that parses to exactly one
such lexeme reads that range instead; every filter, facet, sort and score is computed as
before, so results and facet counts are the same (tests/test_discovery_search.py).

Rows follow product writes through a trigger in the same transaction
(migrations/0017_discovery.sql); which lexemes are hot is chosen by ``rebuild`` (the seed
calls it after a bulk load). What it costs: about 90 bytes per (hot lexeme, product) pair
(1M products, 72 lexemes over 20,000 products each: 2.7M rows) and a few extra row writes
per product insert or listing change.
"""

from __future__ import annotations

import asyncpg

HOT_MIN_PRODUCTS = 20_000  # a word used by at least this many products gets its own rows


async def hot_lexeme(conn: asyncpg.Connection, text: str, config: str) -> str | None:
    """The hot lexeme ``text`` parses to alone, or None (several words, operators, or a
    word that is not hot)."""
    return await conn.fetchval(
        "SELECT lexeme FROM search_hot_terms"
        " WHERE query = websearch_to_tsquery($1::regconfig, $2)", config, text)


async def rebuild(conn: asyncpg.Connection, *, min_products: int = HOT_MIN_PRODUCTS) -> int:
    """Choose the hot lexemes afresh and fill their rows; returns how many are hot."""
    hot = await conn.fetchval("SELECT search_hot_terms_rebuild($1)", min_products)
    await conn.execute("ANALYZE search_hot_hits")
    return hot
