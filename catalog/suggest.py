"""Autocomplete vocabulary: the words of active products' names and brands, each with the
number of active products that use it.

Suggestions complete the last word the shopper is typing from this table (prefix match,
most used first) and fall back to trigram similarity for typos. The same table gives
search its "did you mean" when a query matches nothing. Counts change in the transaction
that changes the product, so they are exact.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import asyncpg

# Words are runs of letters/digits, apostrophes inside kept ("levi's"); a term has two or
# more characters and at least one letter (no bare sizes like "15").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_LETTER = re.compile(r"[^\W\d_]")
MAX_TERM = 40


def words(text: str) -> list[str]:
    """The terms of ``text`` in order, lower-cased, repeats kept."""
    return [w for w in _WORD.findall(text.lower())
            if 2 <= len(w) <= MAX_TERM and _LETTER.search(w)]


def product_terms(name: str, brand: str) -> set[str]:
    return set(words(name)) | set(words(brand))


def term_delta(before: set[str], after: set[str]) -> Counter[str]:
    """+1 for each term a product gains, -1 for each it loses."""
    delta: Counter[str] = Counter()
    for term in after - before:
        delta[term] += 1
    for term in before - after:
        delta[term] -= 1
    return delta


async def apply_term_counts(conn: asyncpg.Connection, delta: Counter[str] | dict[str, int]
                            ) -> None:
    """Add ``delta`` to the product counts. Terms are written in sorted order so concurrent
    product writes lock shared terms in the same order (no deadlock)."""
    changes = sorted((t, n) for t, n in delta.items() if n)
    if not changes:
        return
    await conn.execute(
        "INSERT INTO search_terms (term, product_count)"
        " SELECT t, n FROM unnest($1::text[], $2::int[]) AS d(t, n) ORDER BY t"
        " ON CONFLICT (term) DO UPDATE"
        " SET product_count = search_terms.product_count + EXCLUDED.product_count",
        [t for t, _ in changes], [n for _, n in changes])


class Suggestions:
    """Autocomplete and spelling help over ``search_terms``."""

    def __init__(self, *, pool: asyncpg.Pool, limit: int = 10) -> None:
        self._pool = pool
        self._limit = limit

    async def suggest(self, text: str, *, limit: int | None = None) -> list[str]:
        """Complete the last word of ``text``; the words before it are kept as typed (in
        lower case). Nothing to complete gives an empty list."""
        tokens = _WORD.findall(text.lower())
        if not tokens:
            return []
        prefix, head = tokens[-1], " ".join(tokens[:-1])
        limit = limit or self._limit
        rows = await self._pool.fetch(
            "SELECT term FROM search_terms WHERE term LIKE $1 || '%' AND product_count > 0"
            " ORDER BY product_count DESC, term LIMIT $2", prefix, limit)
        if not rows and len(prefix) >= 3:
            rows = await self._similar(prefix, limit)
        return [f"{head} {r['term']}" if head else r["term"] for r in rows]

    async def did_you_mean(self, text: str) -> str | None:
        """``text`` with each unknown word replaced by the closest known one, or None when
        every word is known or nothing close exists."""
        tokens = words(text)
        if not tokens:
            return None
        known = {r["term"] for r in await self._pool.fetch(
            "SELECT term FROM search_terms WHERE term = ANY($1::text[]) AND product_count > 0",
            tokens)}
        fixed, changed = [], False
        for token in tokens:
            if token in known:
                fixed.append(token)
                continue
            close = await self._similar(token, 1)
            if not close:
                return None
            fixed.append(close[0]["term"])
            changed = True
        return " ".join(fixed) if changed else None

    async def _similar(self, token: str, limit: int) -> list[asyncpg.Record]:
        # `%` uses pg_trgm.similarity_threshold (0.3) and the trigram index.
        return await self._pool.fetch(
            "SELECT term FROM search_terms WHERE term % $1 AND product_count > 0"
            " ORDER BY similarity(term, $1) DESC, product_count DESC, term LIMIT $2",
            token, limit)


def count_terms(names_and_brands: Iterable[tuple[str, str]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, brand in names_and_brands:
        counts.update(product_terms(name, brand))
    return counts
