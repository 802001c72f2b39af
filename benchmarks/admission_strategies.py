"""Six ways to admit buyers to one hot SKU, measured in one run on this machine.

    python -m benchmarks.admission_strategies --quick    (3 s per strategy)
    python -m benchmarks.admission_strategies --full     (10 s per strategy)

64 concurrent buyers take one unit each. Every strategy records a hold, as a real system
must: the Postgres ones insert a row in the same transaction as the stock change, the
Redis ones run reserve.lua (stock, per-buyer count, hold, stream event). Each strategy
runs twice: for throughput on deep stock for a fixed time, and to sell out a stock of 500
exactly, which is the oversell check (successes = stock, stock never below zero, rows =
successes). Prints reservations/s, the ratio to the textbook baseline, retries, and the
oversell verdict; writes JSON and a PNG bar chart to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import asyncpg
import uvloop

from benchmarks.admission import SALE, load_sale, redis_benchmark
from benchmarks.common import BENCH_DATABASE_URL, BENCH_REDIS_URL, RESULTS, table, write_results
from engine.admission import Admission
from engine.connections import create_redis, database_name, with_database
from engine.errors import SoldOut
from engine.keys import sale_keys
from engine.settings import Settings

BUYERS = 64
SELL_OUT_STOCK = 500

SCHEMA = """
DROP TABLE IF EXISTS bench_stock, bench_holds;
CREATE TABLE bench_stock (product_id int PRIMARY KEY, available_qty int NOT NULL
    CHECK (available_qty >= 0), version int NOT NULL DEFAULT 0);
CREATE TABLE bench_holds (hold_id bigserial PRIMARY KEY, product_id int NOT NULL,
    user_id bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""


class Stop(Exception):
    """Sold out: the buyer goes home."""


async def optimistic(conn: asyncpg.Connection, user: int, stats: dict) -> None:
    """Read the row and its version, then update only if nobody changed it; else retry."""
    while True:
        row = await conn.fetchrow("SELECT available_qty, version FROM bench_stock"
                                  " WHERE product_id = 1")
        if row["available_qty"] < 1:
            raise Stop
        async with conn.transaction():
            done = await conn.fetchval(
                "UPDATE bench_stock SET available_qty = available_qty - 1, version = version + 1"
                " WHERE product_id = 1 AND version = $1 RETURNING 1", row["version"])
            if done:
                await conn.execute("INSERT INTO bench_holds (product_id, user_id)"
                                   " VALUES (1, $1)", user)
                return
        stats["retries"] += 1


async def for_update(conn: asyncpg.Connection, user: int, stats: dict) -> None:
    async with conn.transaction():
        qty = await conn.fetchval("SELECT available_qty FROM bench_stock WHERE product_id = 1"
                                  " FOR UPDATE")
        if qty < 1:
            raise Stop
        await conn.execute("UPDATE bench_stock SET available_qty = available_qty - 1"
                           " WHERE product_id = 1")
        await conn.execute("INSERT INTO bench_holds (product_id, user_id) VALUES (1, $1)", user)


async def conditional(conn: asyncpg.Connection, user: int, stats: dict) -> None:
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE bench_stock SET available_qty = available_qty - 1"
            " WHERE product_id = 1 AND available_qty >= 1 RETURNING 1")
        if not done:
            raise Stop
        await conn.execute("INSERT INTO bench_holds (product_id, user_id) VALUES (1, $1)", user)


async def run_postgres(pool: asyncpg.Pool, step, *, stock: int, seconds: float) -> dict:
    await pool.execute("TRUNCATE bench_holds; DELETE FROM bench_stock")
    await pool.execute("INSERT INTO bench_stock VALUES (1, $1, 0)", stock)
    stats = {"retries": 0, "ok": 0}
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def buyer() -> None:
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                try:
                    await step(conn, next(counter), stats)
                except Stop:
                    return
                stats["ok"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(buyer() for _ in range(BUYERS)))
    elapsed = time.perf_counter() - started
    left = await pool.fetchval("SELECT available_qty FROM bench_stock WHERE product_id = 1")
    rows = await pool.fetchval("SELECT count(*) FROM bench_holds")
    return {"ok": stats["ok"], "seconds": elapsed, "per_second": stats["ok"] / elapsed,
            "retries_per_success": stats["retries"] / max(1, stats["ok"]),
            "stock_left": left, "rows": rows,
            "oversold": max(0, stats["ok"] - stock) + max(0, -left)
            + abs(rows - stats["ok"])}


async def run_redis(redis, *, batching: bool, stock: int, seconds: float) -> dict:
    await redis.flushdb()
    await load_sale(redis)
    await redis.hset(sale_keys(SALE).meta, "tokens", stock)
    await redis.hset(sale_keys(SALE).meta, "initial", stock)
    admission = Admission(redis, batching=batching)
    stats = {"ok": 0}
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def buyer() -> None:
        while time.perf_counter() < deadline:
            try:
                await admission.reserve(SALE, next(counter), 1, "k")
            except SoldOut:
                return
            stats["ok"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(buyer() for _ in range(BUYERS)))
    elapsed = time.perf_counter() - started
    await admission.close()
    left = int(await redis.hget(sale_keys(SALE).meta, "tokens"))
    holds = await redis.hlen(sale_keys(SALE).res)
    return {"ok": stats["ok"], "seconds": elapsed, "per_second": stats["ok"] / elapsed,
            "retries_per_success": 0.0, "stock_left": left, "rows": holds,
            "oversold": max(0, stats["ok"] - stock) + max(0, -left) + abs(holds - stats["ok"])}


STRATEGIES = [
    ("Postgres optimistic version check", "pg", optimistic),
    ("Postgres SELECT ... FOR UPDATE", "pg", for_update),
    ("Postgres conditional UPDATE ... WHERE available_qty >= q", "pg", conditional),
    ("Redis reserve.lua, one EVALSHA per call (redis-py)", "redis", False),
    ("Redis reserve.lua, auto-batched pipeline (flashsale)", "redis", True),
]


async def main_async(mode: str) -> dict:
    seconds = 3.0 if mode == "quick" else 10.0
    url = BENCH_DATABASE_URL
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                    database_name(url)):
            await admin.execute(f'CREATE DATABASE "{database_name(url)}"')
    finally:
        await admin.close()
    pool = await asyncpg.create_pool(url, min_size=BUYERS, max_size=BUYERS)
    redis = create_redis(Settings(redis_url=BENCH_REDIS_URL), max_connections=BUYERS + 8)
    await pool.execute(SCHEMA)
    rows = []
    try:
        for name, kind, how in STRATEGIES:
            if kind == "pg":
                speed = await run_postgres(pool, how, stock=10**8, seconds=seconds)
                exact = await run_postgres(pool, how, stock=SELL_OUT_STOCK, seconds=600)
            else:
                speed = await run_redis(redis, batching=how, stock=10**8, seconds=seconds)
                exact = await run_redis(redis, batching=how, stock=SELL_OUT_STOCK, seconds=600)
            rows.append({"strategy": name, "speed": speed, "sell_out": exact})
        await load_sale(redis)
        for label, clients, pipeline in (("50 clients", 50, 1), ("50 clients, pipeline 16", 50,
                                                                 16)):
            rb = await asyncio.to_thread(redis_benchmark, BENCH_REDIS_URL,
                                         requests=int(40_000 * seconds), clients=clients,
                                         pipeline=pipeline)
            if rb:
                rows.append({"strategy": f"redis-benchmark EVALSHA reserve.lua, {label}",
                             "speed": {**rb, "retries_per_success": 0.0}, "sell_out": None})
            await load_sale(redis)
    finally:
        await pool.execute("DROP TABLE IF EXISTS bench_stock, bench_holds")
        await pool.close()
        await redis.flushdb()
        await redis.aclose()
    return {"buyers": BUYERS, "seconds_per_strategy": seconds, "rows": rows}


def bar_chart(results: dict, mode: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [r["strategy"] for r in results["rows"]]
    rates = [r["speed"]["per_second"] for r in results["rows"]]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    bars = ax.barh(range(len(names)), rates, color=["#8a8a8a"] * 3 + ["#d9822b"] * 2
                   + ["#4a7ebb"] * (len(names) - 5))
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("reservations per second (log scale), 64 concurrent buyers, one SKU")
    for bar, rate in zip(bars, rates, strict=True):
        ax.text(rate, bar.get_y() + bar.get_height() / 2, f" {rate:,.0f}", va="center",
                fontsize=8)
    ax.set_title("Admission strategies on this machine, same run")
    fig.tight_layout()
    path = RESULTS / f"admission-strategies-{mode}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: dict) -> str:
    base = results["rows"][0]["speed"]["per_second"]
    out = []
    for r in results["rows"]:
        s, x = r["speed"], r["sell_out"]
        verdict = ("-" if x is None else
                   f"{x['ok']}/{SELL_OUT_STOCK} sold, left {x['stock_left']}, "
                   f"oversold {x['oversold']}")
        out.append([r["strategy"], s["per_second"], f"{s['per_second'] / base:.1f}x",
                    f"{s['retries_per_success']:.1f}", verdict])
    return table(f"Admission strategies: {results['buyers']} concurrent buyers, one hot SKU",
                 ["strategy", "reservations/s", "vs optimistic", "retries/success",
                  "sell-out check"], out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="3 s per strategy (default)")
    group.add_argument("--full", action="store_true", help="10 s per strategy")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    results = uvloop.run(main_async(mode))
    print(report(results))
    png = bar_chart(results, mode)
    path = write_results("admission-strategies", mode, results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}"
          + (f", {png.relative_to(png.parents[2])}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
