"""A deterministic synthetic catalog, bulk-loaded with COPY.

Product ``i`` of a seed is a pure function of ``(seed, i)``: chained 64-bit splitmix hashes
pick its category, brand, series, specs, colour, price, rating and stock, so the same
``--products N --seed S`` always yields the same names, prices, ratings and stock
(``created_at`` is relative to the load time; ids continue after existing products).

Speed: rows are produced as COPY text in ~1 MB chunks while Postgres ingests the previous
chunk (one core each). A large load drops the products table's secondary indexes first and
rebuilds them after the COPY in the same transaction: one bulk build is several times
faster than a million incremental GIN and btree inserts, and a failed load rolls back
whole, indexes included.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from catalog import hot_terms, seed_words
from catalog.suggest import apply_term_counts, words

MASK = (1 << 64) - 1
SELLERS = 50
CHUNK_ROWS = 5000
HISTORY = timedelta(days=730)  # created_at spreads over two years, newest = highest id
BULK_THRESHOLD = 50_000  # below this, incremental index upkeep is cheaper than a rebuild
PRODUCT_COLUMNS = ("product_id", "seller_id", "name", "description", "brand", "category_id",
                   "price", "currency", "rating_avg", "rating_count", "rating_sum", "status",
                   "created_at", "updated_at")
_ENDINGS = ("99", "49", "00", "95")


@dataclass
class SeedReport:
    products: int
    first_product_id: int
    last_product_id: int
    categories: int
    sellers: int
    terms: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


def _mix(x: int) -> int:
    """splitmix64: a cheap, well-spread hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class _Leaf:
    category_id: int
    leaf: seed_words.Leaf
    brand_terms: tuple[frozenset[str], ...]
    noun_terms: tuple[frozenset[str], ...]
    spec_terms: tuple[frozenset[str], ...]


class CatalogGenerator:
    """Rows of products ``index .. index+count`` of one seed, as COPY text lines."""

    def __init__(self, *, seed: int, leaves: list[tuple[int, seed_words.Leaf]], sellers: list[int],
                 first_id: int, total: int, now: datetime) -> None:
        self.seed = seed
        self.sellers = sellers
        self.first_id = first_id
        self.total = total
        self.now = now
        self.leaves = [_Leaf(cid, leaf, tuple(frozenset(words(b)) for b in leaf.brands),
                             tuple(frozenset(words(n.word)) for n in leaf.nouns),
                             tuple(frozenset(words(s)) for s in leaf.specs))
                       for cid, leaf in leaves]
        self.series_terms = tuple(frozenset(words(s)) for s in seed_words.SERIES)
        self.color_terms = tuple(frozenset(words(c)) for c in seed_words.COLORS)
        self.edition_terms = tuple(frozenset(words(e)) for e in seed_words.EDITIONS)
        self.terms: Counter[str] = Counter()
        self.stock: list[str] = []
        # Rows are written grouped by category (ids stay spread over all categories): the
        # heap is then clustered as `CLUSTER products USING products_category_idx` would
        # leave it, and a category's rows, or a search for a category's noun, share pages.
        base = seed * 0x100000001B3
        groups: list[list[int]] = [[] for _ in self.leaves]
        for i in range(total):
            groups[_mix(base + i) % len(self.leaves)].append(i)
        self.order = [i for group in groups for i in group]

    def chunk(self, start: int, stop: int) -> bytes:
        """COPY text for rows ``start..stop`` of the load order; the matching inventory
        lines are appended to ``self.stock`` and name terms counted."""
        out: list[str] = []
        stock = self.stock
        terms = self.terms
        leaves, n_leaves = self.leaves, len(self.leaves)
        sellers, n_sellers = self.sellers, len(self.sellers)
        series, colors, editions = seed_words.SERIES, seed_words.COLORS, seed_words.EDITIONS
        qualities, benefits, uses = seed_words.QUALITIES, seed_words.BENEFITS, seed_words.USES
        span = HISTORY.total_seconds()
        base = self.seed * 0x100000001B3
        for i in self.order[start:stop]:
            h1 = _mix(base + i)
            h2 = _mix(h1)
            h3 = _mix(h2)
            lf = leaves[h1 % n_leaves]
            leaf = lf.leaf
            b = (h1 >> 8) % len(leaf.brands)
            n = (h1 >> 16) % len(leaf.nouns)
            s = (h1 >> 22) % len(series)
            sp1 = (h1 >> 28) % len(leaf.specs)
            sp2 = (h1 >> 34) % len(leaf.specs)
            c = (h1 >> 40) % len(colors)
            model = 100 + (h1 >> 46) % 900
            brand, noun = leaf.brands[b], leaf.nouns[n].word
            name = f"{brand} {series[s]} {noun} {model}, {leaf.specs[sp1]}"
            if sp2 != sp1:
                name += f", {leaf.specs[sp2]}"
            name += f", {colors[c]}"
            used = lf.brand_terms[b] | lf.noun_terms[n] | self.series_terms[s] \
                | lf.spec_terms[sp1] | lf.spec_terms[sp2] | self.color_terms[c]
            if h2 % 2000 == 0:
                e = (h2 >> 11) % len(editions)
                name += f", {editions[e]}"
                used = used | self.edition_terms[e]
            terms.update(used)
            description = (
                f"The {brand} {series[s]} {noun.lower()} is a {qualities[(h2 >> 3) % 16]},"
                f" {qualities[(h2 >> 7) % 16]} choice for {uses[(h2 >> 13) % len(uses)]}."
                f" {leaf.specs[sp1]}{'' if sp2 == sp1 else ' and ' + leaf.specs[sp2].lower()},"
                f" finished in {colors[c].lower()}. {benefits[(h2 >> 17) % len(benefits)]}")
            low, high = leaf.nouns[n].price
            u = (h2 >> 20) % 1000
            dollars = low + (high - low) * u * u // 1_000_000
            price = f"{dollars}.{_ENDINGS[(h2 >> 30) % 4]}"
            if (h2 >> 32) % 100 < 20:
                count = total = 0
                avg = "0.00"
            else:
                count = 1 + ((h2 >> 39) % 1000) ** 2 // 2000
                total = min(5 * count, max(count, count * (250 + (h3 % 251)) // 100))
                cents = (total * 200 + count) // (2 * count)  # round half up, like numeric
                avg = f"{cents // 100}.{cents % 100:02d}"
            pid = self.first_id + i
            created = (self.now - timedelta(seconds=span * (self.total - i) / self.total
                                            + (h3 >> 20) % 60)).isoformat()
            out.append(f"{pid}\t{sellers[(h3 >> 8) % n_sellers]}\t{name}\t{description}\t"
                       f"{brand}\t{lf.category_id}\t{price}\tUSD\t{avg}\t{count}\t{total}\t"
                       f"active\t{created}\t{created}\n")
            qty = 0 if (h3 >> 40) % 100 < 8 else 1 + (h3 >> 47) % 500
            stock.append(f"{pid}\t{qty}\n")
        return "".join(out).encode()


async def _ensure_categories(conn: asyncpg.Connection) -> list[tuple[int, seed_words.Leaf]]:
    leaves = []
    for department, children in seed_words.DEPARTMENTS.items():
        parent = await _category(conn, department, None)
        for leaf in children:
            leaves.append((await _category(conn, leaf.name, parent), leaf))
    return leaves


async def _category(conn: asyncpg.Connection, name: str, parent: int | None) -> int:
    await conn.execute(
        "INSERT INTO categories (name, parent_id) VALUES ($1, $2)"
        " ON CONFLICT ((coalesce(parent_id, 0)), (lower(name))) DO NOTHING", name, parent)
    return await conn.fetchval(
        "SELECT category_id FROM categories WHERE coalesce(parent_id, 0) = coalesce($2, 0)"
        " AND lower(name) = lower($1)", name, parent)


async def _ensure_sellers(conn: asyncpg.Connection, password_hash: str) -> list[int]:
    emails = [f"seller{k:03d}@seed.flashsale.invalid" for k in range(1, SELLERS + 1)]
    await conn.execute(
        "INSERT INTO users (email, name, password_hash, role)"
        " SELECT e, 'Seed Seller ' || right(split_part(e, '@', 1), 3), $2, 'seller'"
        " FROM unnest($1::text[]) AS e ON CONFLICT ((lower(email))) DO NOTHING",
        emails, password_hash)
    rows = await conn.fetch("SELECT user_id FROM users WHERE lower(email) = ANY($1::text[])"
                            " ORDER BY email", emails)
    return [r["user_id"] for r in rows]


async def _secondary_indexes(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Name and definition of each products index that no constraint owns."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(x.indexrelid) AS ddl FROM pg_index x"
        " JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = 'products'::regclass AND NOT x.indisprimary"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)"
        " ORDER BY c.relname")
    return [(r["relname"], r["ddl"]) for r in rows]


async def seed_catalog(database_url: str, *, products: int, seed: int, password_hash: str,
                       on_progress: Callable[[int], None] | None = None,
                       on_phase: Callable[[str], None] | None = None) -> SeedReport:
    """Load ``products`` synthetic products into the (migrated) database."""
    started = time.perf_counter()
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 3)
        mark = now

    conn = await asyncpg.connect(database_url, timeout=10, command_timeout=None)
    try:
        leaves = await _ensure_categories(conn)
        sellers = await _ensure_sellers(conn, password_hash)
        phase("setup")
        async with conn.transaction():
            # Blocks other product inserts (not reads) so the id block below is ours.
            await conn.execute("LOCK TABLE products IN EXCLUSIVE MODE")
            existing = await conn.fetchval("SELECT count(*) FROM products")
            first_id = await conn.fetchval("SELECT nextval('products_product_id_seq')")
            await conn.execute("SELECT setval('products_product_id_seq', $1)",
                               first_id + products - 1)
            bulk = products >= max(BULK_THRESHOLD, existing)
            indexes = await _secondary_indexes(conn) if bulk else []
            for name, _ in indexes:
                await conn.execute(f'DROP INDEX "{name}"')
            if bulk:  # the hot-word rows are rebuilt whole below, after the indexes
                await conn.execute("ALTER TABLE products DISABLE TRIGGER products_search_hot_hits")
            gen = CatalogGenerator(seed=seed, leaves=leaves, sellers=sellers,
                                   first_id=first_id, total=products,
                                   now=datetime.now(UTC).replace(microsecond=0))
            await conn.copy_to_table("products", source=_chunks(gen, products, on_progress),
                                     columns=PRODUCT_COLUMNS, format="text")
            phase("copy_products")
            await conn.copy_to_table("inventory", source=_stock_chunks(gen.stock),
                                     columns=("product_id", "available_qty"), format="text")
            gen.stock.clear()
            await apply_term_counts(conn, gen.terms)
            phase("copy_inventory_terms")
            if indexes:
                if on_phase:
                    on_phase(f"building {len(indexes)} indexes")
                await conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
                for _, ddl in indexes:
                    await conn.execute(ddl)
                phase("indexes")
            if bulk:
                if on_phase:
                    on_phase("very common words")
                await conn.execute("ALTER TABLE products ENABLE TRIGGER products_search_hot_hits")
                await hot_terms.rebuild(conn)
                phase("hot_terms")
        if on_phase:
            on_phase("analyzing")
        await conn.execute("VACUUM (ANALYZE) products, inventory, search_terms,"
                           " search_hot_hits, search_hot_cells")
        phase("vacuum_analyze")
        categories = await conn.fetchval("SELECT count(*) FROM categories")
        terms = await conn.fetchval("SELECT count(*) FROM search_terms")
    finally:
        await conn.close()
    return SeedReport(products=products, first_product_id=first_id,
                      last_product_id=first_id + products - 1, categories=categories,
                      sellers=len(sellers), terms=terms,
                      seconds=round(time.perf_counter() - started, 3), phases=phases)


async def _chunks(gen: CatalogGenerator, total: int,
                  on_progress: Callable[[int], None] | None) -> AsyncIterator[bytes]:
    for start in range(0, total, CHUNK_ROWS):
        stop = min(total, start + CHUNK_ROWS)
        yield gen.chunk(start, stop)
        if on_progress:
            on_progress(stop - start)


async def _stock_chunks(lines: list[str]) -> AsyncIterator[bytes]:
    for start in range(0, len(lines), 50_000):
        yield "".join(lines[start:start + 50_000]).encode()
