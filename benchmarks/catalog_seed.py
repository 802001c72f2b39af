"""The catalog benchmark's data: a seeded catalog (reused when it is the same), an order
history with its co-purchase counts, and the ids and words the requests are drawn from
(benchmarks/catalog.py drives them)."""

from __future__ import annotations

import sys
import time
from typing import Any

import asyncpg

from benchmarks.common import fresh_database


async def prepare(database_url: str, products: int, reuse: bool) -> dict[str, Any]:
    """Seed the benchmark database (or keep it with --reuse) and return the seed figures."""
    from accounts.passwords import hash_password
    from catalog.seed import seed_catalog

    if reuse:
        try:
            conn = await asyncpg.connect(database_url)
            try:
                have = await conn.fetchval("SELECT count(*) FROM products")
            finally:
                await conn.close()
            if have == products:
                return {"reused": True, "products": products}
        except (OSError, asyncpg.PostgresError):
            pass
    await fresh_database(database_url)
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 100_000 < n or done[0] == products:
            print(f"  seeded {done[0]:,}/{products:,}", file=sys.stderr, flush=True)

    report = await seed_catalog(database_url, products=products, seed=1,
                                password_hash=hash_password("benchmark-seller-password"),
                                on_progress=progress)
    return {"reused": False, "products": products, "seconds": report.seconds,
            "phases": report.phases}


async def order_history(database_url: str, orders: int) -> dict[str, Any]:
    """Paid orders with a popularity skew and same-category companions (see the module
    docstring), loaded with triggers off, then the co-purchase counts rebuilt in bulk."""
    conn = await asyncpg.connect(database_url, command_timeout=None)
    started = time.perf_counter()
    try:
        if await conn.fetchval("SELECT count(*) FROM orders") == orders:
            return {"orders": orders, "reused": True}
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
            await conn.execute("TRUNCATE order_items, orders CASCADE")
            buyer = await conn.fetchval(
                "INSERT INTO users (email, name, password_hash) VALUES"
                " ('bench-buyer@example.com', 'Bench Buyer', 'x')"
                " ON CONFLICT (lower(email)) DO UPDATE SET name = EXCLUDED.name"
                " RETURNING user_id")
            lo, hi = await conn.fetchrow("SELECT min(product_id), max(product_id) FROM products")
            await conn.execute("SELECT setseed(0.17)")
            await conn.execute(
                "CREATE TEMP TABLE ranked ON COMMIT DROP AS SELECT product_id, category_id,"
                " row_number() OVER (PARTITION BY category_id ORDER BY product_id) AS rn,"
                " count(*) OVER (PARTITION BY category_id) AS n FROM products"
                " WHERE status = 'active'")
            await conn.execute("CREATE INDEX ON ranked (category_id, rn)")
            await conn.execute(
                "INSERT INTO orders (user_id, idempotency_key, status, subtotal, total)"
                " SELECT $1, 'history-' || g, 'paid', 0, 0 FROM generate_series(1, $2) g",
                buyer, orders)
            await conn.execute(
                "CREATE TEMP TABLE anchors ON COMMIT DROP AS SELECT o.order_id,"
                " $1::bigint + floor(($2::bigint - $1 + 1) * power(random(), 3))::bigint"
                " AS product_id,"
                " (ARRAY[1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5])[1 + floor(random() * 11)::int] AS k"
                " FROM orders o", lo, hi)
            await conn.execute(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price, subtotal)"
                " SELECT a.order_id, a.product_id, 1, p.price, p.price"
                " FROM anchors a JOIN products p USING (product_id)")
            await conn.execute(
                "WITH comp AS (SELECT a.order_id, p.category_id, random() < 0.7 AS same,"
                "  random() AS u, random() AS v FROM anchors a"
                "  JOIN products p USING (product_id) CROSS JOIN generate_series(2, a.k) j)"
                " INSERT INTO order_items (order_id, product_id, quantity, unit_price, subtotal)"
                " SELECT c.order_id, CASE WHEN c.same AND r.product_id IS NOT NULL"
                "  THEN r.product_id"
                "  ELSE $1::bigint + floor(($2::bigint - $1 + 1) * power(c.v, 3))::bigint END,"
                "  1, 0, 0"
                " FROM comp c LEFT JOIN (SELECT DISTINCT category_id, n FROM ranked) k"
                "  ON k.category_id = c.category_id"
                " LEFT JOIN ranked r ON r.category_id = c.category_id"
                "  AND r.rn = 1 + floor(k.n * power(c.u, 2))::bigint", lo, hi)
            await conn.execute("SELECT copurchase_rebuild()")
        await conn.execute("VACUUM (ANALYZE) orders, order_items, copurchases")
        items, pairs = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM order_items), (SELECT count(*) FROM copurchases)")
    finally:
        await conn.close()
    return {"orders": orders, "items": items, "pairs": pairs,
            "seconds": round(time.perf_counter() - started, 1)}


async def samples(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        top = await conn.fetchval("SELECT max(product_id) FROM products")
        leaves = [r["category_id"] for r in await conn.fetch(
            "SELECT category_id FROM categories WHERE parent_id IS NOT NULL")]
        parents = [r["category_id"] for r in await conn.fetch(
            "SELECT category_id FROM categories WHERE parent_id IS NULL")]
        brands = [r["brand"] for r in await conn.fetch(
            "SELECT brand FROM products GROUP BY brand ORDER BY count(*) DESC LIMIT 30")]
        low = await conn.fetchval("SELECT min(product_id) FROM products")
        hot_words = await conn.fetchval("SELECT count(*) FROM search_hot_terms")
    finally:
        await conn.close()
    return {"top": top, "low": low, "leaves": leaves, "parents": parents, "brands": brands,
            "hot_words": hot_words}
