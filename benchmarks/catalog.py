"""Catalog read paths over HTTP on a seeded catalog: product page (cached and uncached),
browse (first pages and keyset deep paging), search (common term with facets, very common
term, rare term, filtered; cold and warm) and suggest.

``--quick``: 50,000 products (under a minute). ``--full``: 1,000,000 products (the seed
alone takes a minute or two). The benchmark owns the database ``flashsale_bench_catalog``
and Redis db 13; it seeds them afresh unless ``--reuse`` finds the same catalog there.
The gateway runs as a subprocess (``flashsale serve``, one worker); requests come from
``--concurrency`` client tasks in this process, latency measured per request.

An order history is generated on top (``--orders``, default 300,000 at 1M products): 1 to 5
items per order, the first drawn with a strong popularity skew, 70% of the others from the
first item's category (skewed too), the rest from anywhere; its co-purchase counts are
built in bulk (``copurchase_rebuild``). "also_bought_popular" asks for products drawn with
the same skew (long pair lists), "also_bought_any" for any product (mostly the category
fallback).

"Cold" search requests each carry a distinct ``price_max`` above every price: the same
work and answer, but never a cached result, so they show what Postgres does. "Warm"
requests repeat popular queries, as real search traffic does, and hit the result cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from benchmarks.catalog_seed import order_history, prepare, samples
from benchmarks.common import latency_summary, table, write_results
from cli.stack import free_port

DATABASE = "flashsale_bench_catalog"
REDIS_URL = "redis://127.0.0.1:6379/13"
SERVER_URL = os.environ.get("FLASHSALE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/")
MODES = {"quick": {"products": 50_000, "requests": 300, "orders": 15_000},
         "full": {"products": 1_000_000, "requests": 1000, "orders": 300_000}}
COMMON = ("laptop", "headphones", "tent", "sneakers", "blender", "monitor", "novel",
          "shampoo", "dog", "camera")
VERY_COMMON = ("black", "silver", "blue", "wireless", "organic")
RARE = ("anniversary", "heritage", "expedition", "signature", "collector's")


async def drive(http: aiohttp.ClientSession, base: str, paths: list[str],
                concurrency: int, latencies: list[float] | None = None) -> dict[str, Any]:
    """GET every path, ``concurrency`` at a time; latency of each request (appended to
    ``latencies`` when given)."""
    latencies = [] if latencies is None else latencies
    errors = 0
    queue = iter(paths)
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal errors
        for path in queue:
            t0 = time.perf_counter()
            async with http.get(base + path) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"requests": len(latencies), "errors": errors,
            "per_second": round(len(latencies) / seconds, 1), **latency_summary(latencies)}


async def drive_alternating(http: aiohttp.ClientSession, runs: dict[str, tuple[str, list[str]]],
                            concurrency: int, block: int = 25) -> dict[str, dict[str, Any]]:
    """Several (base, paths) runs in alternating blocks, so that each sees the same load
    from the rest of the machine; a summary per run."""
    latencies: dict[str, list[float]] = {name: [] for name in runs}
    errors = dict.fromkeys(runs, 0)
    seconds = dict.fromkeys(runs, 0.0)
    longest = max(len(paths) for _, paths in runs.values())
    for start in range(0, longest, block):
        for name, (base, paths) in runs.items():
            t0 = time.perf_counter()
            part = await drive(http, base, paths[start:start + block], concurrency,
                               latencies[name])
            seconds[name] += time.perf_counter() - t0
            errors[name] += part["errors"]
    return {name: {"requests": len(ms), "errors": errors[name],
                   "per_second": round(len(ms) / max(seconds[name], 1e-9), 1),
                   **latency_summary(ms)} for name, ms in latencies.items()}


async def deep_pages(http: aiohttp.ClientSession, base: str, category: int, pages: int
                     ) -> dict[str, Any]:
    """Follow next_cursor ``pages`` deep; the latency of each page."""
    latencies, path = [], f"/api/v1/products?category={category}&sort=price_asc&page_size=100"
    cursor = None
    for _ in range(pages):
        t0 = time.perf_counter()
        async with http.get(base + path + (f"&cursor={cursor}" if cursor else "")) as resp:
            body = await resp.json()
        latencies.append(time.perf_counter() - t0)
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    return {"requests": len(latencies), "errors": 0, "per_second": 0.0,
            **latency_summary(latencies)}


def cases(s: dict[str, Any], n: int, rng: random.Random) -> dict[str, list[str] | Callable]:
    unique = iter(range(1, 10**9))

    def cold() -> str:  # a price bound above every price: same answer, distinct cache key
        return f"&price_max={99_999_999 + next(unique) / 100:.2f}"

    brands = [quote(b) for b in s["brands"]]
    hot = [rng.randint(1, s["top"]) for _ in range(100)]
    cold_ids = rng.sample(range(1, s["top"] + 1), min(n, s["top"]))
    sorts = ("newest", "price_asc", "price_desc", "rating")
    return {
        "product_get_cached": [f"/api/v1/products/{rng.choice(hot)}" for _ in range(n)],
        "product_get_uncached": [f"/api/v1/products/{i}" for i in cold_ids],
        "browse_category": [
            f"/api/v1/products?category={rng.choice(s['leaves'] + s['parents'])}"
            f"&sort={rng.choice(sorts)}&page={rng.randint(1, 5)}" for _ in range(n)],
        "browse_filtered": [
            f"/api/v1/products?category={rng.choice(s['leaves'])}&brand={rng.choice(brands)}"
            f"&price_min=20&price_max={rng.choice((200, 500, 2000))}&rating_min=3"
            f"&sort={rng.choice(sorts)}" for _ in range(n)],
        "search_common_facets": [f"/api/v1/search?q={rng.choice(COMMON)}{cold()}"
                                 for _ in range(n)],
        "search_very_common": [f"/api/v1/search?q={rng.choice(VERY_COMMON)}{cold()}"
                               for _ in range(max(50, n // 4))],
        # the same requests to a gateway that reads every search from the heap
        "search_very_common_heap": [f"/api/v1/search?q={rng.choice(VERY_COMMON)}{cold()}"
                                    for _ in range(max(50, n // 4))],
        "search_rare": [f"/api/v1/search?q={quote(rng.choice(RARE))}{cold()}"
                        for _ in range(n)],
        "search_filtered": [
            f"/api/v1/search?q={rng.choice(COMMON)}&brand={rng.choice(brands)}"
            f"&price_min=50&rating_min=3.5&sort=price_asc{cold()}" for _ in range(n)],
        "search_warm": [f"/api/v1/search?q={quote(rng.choice(COMMON + VERY_COMMON))}"
                        for _ in range(n)],
        "suggest": [f"/api/v1/search/suggest?q={rng.choice(COMMON + VERY_COMMON)[:3]}"
                    for _ in range(n)],
        # the order history's popularity skew: the products with the longest pair lists
        "also_bought_popular": [
            f"/api/v1/products/{s['low'] + int((s['top'] - s['low'] + 1) * rng.random() ** 3)}"
            "/also-bought" for _ in range(n)],
        "also_bought_any": [f"/api/v1/products/{rng.randint(s['low'], s['top'])}/also-bought"
                            for _ in range(n)],
    }


async def run(mode: str, *, reuse: bool, concurrency: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    cfg = MODES[mode]
    database_url = SERVER_URL.rstrip("/") + "/" + DATABASE
    print(f"preparing {cfg['products']:,} products in {DATABASE}...", file=sys.stderr)
    seeded = await prepare(database_url, cfg["products"], reuse)
    print(f"order history: {cfg['orders']:,} orders...", file=sys.stderr)
    history = await order_history(database_url, cfg["orders"])
    redis = aioredis.Redis.from_url(REDIS_URL)
    await redis.flushdb()
    await redis.aclose()
    port = free_port()
    # A local gateway on the development secret: allowed in development only.
    env = {"FLASHSALE_ENV": "development", **os.environ,
           "FLASHSALE_DATABASE_URL": database_url, "FLASHSALE_REDIS_URL": REDIS_URL,
           "FLASHSALE_RATE_LIMIT": "0", "FLASHSALE_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    # The baseline of the very-common-word search: the design before it had its own rows.
    heap_port = free_port()
    heap_server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(heap_port)],
        env={**env, "FLASHSALE_PORT": str(heap_port), "FLASHSALE_SEARCH_HOT_WORDS": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    heap_base = f"http://127.0.0.1:{heap_port}"
    results: dict[str, Any] = {}
    try:
        connector = aiohttp.TCPConnector(limit=concurrency * 4)
        async with aiohttp.ClientSession(connector=connector) as http:
            for url in (base, heap_base):
                for _ in range(100):
                    try:
                        async with http.get(url + "/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            s = await samples(database_url)
            rng = random.Random(7)
            plan = cases(s, cfg["requests"], rng)
            hot_words = s["hot_words"]
            # warm the connections and the hot product set
            await drive(http, base, plan["product_get_cached"][:200], concurrency)
            await drive(http, heap_base, plan["product_get_cached"][:200], concurrency)
            for name, paths in plan.items():
                if name == "search_warm":  # popular queries, computed once a minute
                    await drive(http, base, sorted(set(paths)), concurrency)
                if name == "search_very_common_heap":
                    continue  # run beside search_very_common
                print(f"  {name}...", file=sys.stderr, flush=True)
                if name == "search_very_common":
                    results.update(await drive_alternating(http, {
                        name: (base, paths),
                        "search_very_common_heap": (heap_base,
                                                    plan["search_very_common_heap"])},
                        concurrency))
                    continue
                results[name] = await drive(http, base, paths, concurrency)
            # A parent category (a merge of its leaves' scans), 100 pages of 100 deep.
            results["browse_deep_cursor"] = await deep_pages(http, base, s["parents"][0], 100)
    finally:
        for process in (server, heap_server):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return {"seed": seeded, "history": history, "hot_words": hot_words,
            "concurrency": concurrency, "cases": results}


def report(data: dict[str, Any]) -> str:
    seed = data["seed"]
    title = (f"catalog, {seed['products']:,} products"
             + (f", seeded in {seed['seconds']:.1f} s" if "seconds" in seed else " (reused)")
             + f", {data['concurrency']} concurrent clients")
    rows = [[name, r["requests"], r["errors"], r["p50_ms"], r["p99_ms"], r["mean_ms"],
             r["per_second"]] for name, r in data["cases"].items()]
    out = table(title, ["case", "requests", "errors", "p50 ms", "p99 ms", "mean ms", "req/s"],
                rows)
    cases = data["cases"]
    notes = []
    hot, heap = cases.get("search_very_common"), cases.get("search_very_common_heap")
    if hot and heap:
        notes.append(
            f"very common word ({data.get('hot_words', 0)} words kept apart), cold, with "
            f"facets: p50 {hot['p50_ms']:.0f} / p99 "
            f"{hot['p99_ms']:.0f} ms; reading the heap in the same run: p50 "
            f"{heap['p50_ms']:.0f} / p99 {heap['p99_ms']:.0f} ms "
            f"(p99 {heap['p99_ms'] / max(hot['p99_ms'], 1e-9):.1f}x faster)")
    bought, page = cases.get("also_bought_popular"), cases.get("product_get_uncached")
    if bought and page:
        notes.append(
            f"also-bought, popular products: p99 {bought['p99_ms']:.1f} ms; an uncached "
            f"product page in the same run: p99 {page['p99_ms']:.1f} ms")
    history = data.get("history", {})
    if "pairs" in history:
        notes.append(f"order history: {history['orders']:,} orders, {history['items']:,} "
                     f"items, {history['pairs']:,} co-purchase pairs")
    return "\n".join([out, *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="50,000 products (default)")
    group.add_argument("--full", action="store_true", help="1,000,000 products")
    parser.add_argument("--reuse", action="store_true",
                        help="keep an existing benchmark catalog of the same size")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    import uvloop

    data = uvloop.run(run(mode, reuse=args.reuse, concurrency=args.concurrency))
    print(report(data))
    path = write_results("catalog", mode, data)
    print(f"results: {path}")
    failed = sum(r["errors"] for r in data["cases"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
