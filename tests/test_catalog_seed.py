"""`flashsale catalog seed`: deterministic content, COPY path with index rebuild, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from catalog import seed as seeding

FINGERPRINT = """SELECT p.name, p.brand, p.price, p.rating_avg, p.rating_count, p.rating_sum,
    c.name AS category, i.available_qty FROM products p JOIN categories c USING (category_id)
    JOIN inventory i USING (product_id) ORDER BY p.product_id"""


async def test_same_seed_same_catalog_and_indexes_rebuilt(settings, pool, monkeypatch) -> None:
    monkeypatch.setattr(seeding, "BULK_THRESHOLD", 100)  # take the drop-and-rebuild path
    before = {r["indexname"] for r in await pool.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'products'")}
    report = await seeding.seed_catalog(settings.database_url, products=400, seed=3,
                                        password_hash="x")
    assert (report.products, report.first_product_id, report.last_product_id) == (400, 1, 400)
    assert "indexes" in report.phases
    first = [tuple(r) for r in await pool.fetch(FINGERPRINT)]
    after = {r["indexname"] for r in await pool.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'products'")}
    assert after == before
    await pool.execute("TRUNCATE products, inventory, search_terms CASCADE")
    await seeding.seed_catalog(settings.database_url, products=400, seed=3, password_hash="x")
    assert [tuple(r) for r in await pool.fetch(FINGERPRINT)] == first
    # the rows are consistent with what the services keep
    bad = await pool.fetchval(
        "SELECT count(*) FROM products WHERE rating_count > 0 AND rating_avg <>"
        " round(rating_sum::numeric / rating_count, 2) OR rating_sum NOT BETWEEN rating_count"
        " AND 5 * rating_count")
    assert bad == 0
    sellers = await pool.fetchval("SELECT count(DISTINCT seller_id) FROM products")
    assert sellers > 1
    assert await pool.fetchval("SELECT count(*) FROM products WHERE price <= 0") == 0


async def test_cli_seed_json_and_search_finds_seeded_products(settings, pool, api) -> None:
    count = 250
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "catalog", "seed", "--products", str(count),
        "--seed", "9", "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["products"] == count and report["sellers"] == seeding.SELLERS
    assert await pool.fetchval("SELECT count(*) FROM products") == count
    # the seeded vocabulary is searchable and suggestible at once
    name = await pool.fetchval("SELECT name FROM products ORDER BY product_id LIMIT 1")
    brand_word = name.split()[0].lower()
    _, found = await api.call("GET", f"/api/v1/search?q={brand_word}", expect=200)
    assert found["total"] >= 1
    _, hints = await api.call("GET", f"/api/v1/search/suggest?q={brand_word[:3]}", expect=200)
    assert brand_word in hints["suggestions"] or any(
        s.startswith(brand_word[:3]) for s in hints["suggestions"])
