"""Reconciler drain rate: how fast a backlog of sale events reaches Postgres.

    python -m benchmarks.reconciler --quick    (20,000 events)
    python -m benchmarks.reconciler --full     (100,000 events)
    python -m benchmarks.reconciler --cluster  (20,000 events over three sales: one Redis
                                                vs the local Redis Cluster, same run)

The backlog is made by the real scripts (reserve, then confirm or release for a share of
the holds) while no reconciler runs; then one reconciler (the real Consumer, in-process)
drains it into Postgres with fsync as the server has it (reported). Printed: events per
second for several batch sizes, beside the rate at which Redis produced the backlog.
``--cluster`` drains three sales' backlogs (one stream each) from one Redis and then from
the local cluster (`make cluster`; the sales spread over its masters), where the consumer
reads one XREADGROUP per slot in one pipeline per master instead of one call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from decimal import Decimal

import uvloop

from benchmarks.common import (
    BENCH_DATABASE_URL,
    BENCH_REDIS_URL,
    fresh_database,
    table,
    write_results,
)
from engine.admission import Admission
from engine.connections import create_pool, create_redis, open_redis
from engine.sales import Sales
from engine.settings import Settings
from reconciler.consumer import Consumer
from reconciler.lag import stream_lag


async def make_backlog(settings: Settings, pool, redis, events: int) -> tuple[int, float]:
    """A sale whose stream holds ``events`` events: 70% reserved, 20% confirmed,
    10% released. Returns (sale id, seconds Redis took to produce them)."""
    holds_wanted = int(events / 1.3)
    product = await pool.fetchval(
        "INSERT INTO products (name, price) VALUES ('Bench', 1) RETURNING product_id")
    await pool.execute("INSERT INTO inventory (product_id, available_qty) VALUES ($1, $2)",
                       product, holds_wanted)
    sales = Sales(pool=pool, redis=redis)
    sale = (await sales.create(product_id=product, quantity=holds_wanted,
                               price=Decimal("1.00"), per_user_limit=1))["sale_id"]
    admission = Admission(redis)
    started = time.perf_counter()
    holds = []
    for start in range(0, holds_wanted, 2000):
        holds += await asyncio.gather(*(admission.reserve(sale, u, 1, "k")
                                        for u in range(start, min(start + 2000, holds_wanted))))
    extra = events - len(holds)
    confirm, release = holds[: extra * 2 // 3], holds[extra * 2 // 3: extra]
    await asyncio.gather(*(admission.confirm(h.reservation_id, user_id=h.user_id, order_id=i + 1)
                           for i, h in enumerate(confirm)))
    await asyncio.gather(*(admission.release(h.reservation_id, user_id=h.user_id)
                           for h in release))
    await admission.close()
    return sale, time.perf_counter() - started


async def drain(settings: Settings, pool, redis, *sales: int) -> float:
    consumer = Consumer(redis=redis, pool=pool, settings=settings, name="bench")
    task = asyncio.create_task(consumer.run())
    started = time.perf_counter()
    for sale in sales:
        while (await stream_lag(redis, sale)).pending:
            await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    consumer.stopping.set()
    await task
    return elapsed


async def main_async(mode: str) -> dict:
    events = 20_000 if mode == "quick" else 100_000
    batches = (500, 1000, 5000) if mode == "full" else (1000,)
    results = {"events": events, "runs": []}
    for batch in batches:
        settings = Settings(redis_url=BENCH_REDIS_URL, database_url=BENCH_DATABASE_URL,
                            reconcile_batch=batch, reconcile_block_ms=50)
        await fresh_database(settings.database_url)
        redis = create_redis(settings, max_connections=64)
        pool = await create_pool(settings, min_size=1, max_size=4)
        try:
            await redis.flushdb()
            results["fsync"] = await pool.fetchval("SHOW fsync")
            results["synchronous_commit"] = await pool.fetchval("SHOW synchronous_commit")
            sale, produce_s = await make_backlog(settings, pool, redis, events)
            made = await redis.xlen(f"fs:{{s:{sale}}}:events") - 1  # minus 'loaded'
            seconds = await drain(settings, pool, redis, sale)
            rows = await pool.fetchval("SELECT count(*) FROM sale_reservations")
            results["runs"].append({
                "batch": batch, "events": made, "seconds": round(seconds, 3),
                "events_per_second": round(made / seconds), "rows": rows,
                "redis_produced_per_second": round(made / produce_s)})
        finally:
            await redis.flushdb()
            await redis.aclose()
            await pool.close()
    return results


def cluster_url() -> str:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "cluster.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"the local Redis Cluster could not start: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


async def compare_cluster(events: int = 20_000, sales_n: int = 3) -> dict:
    """The same three-sale backlog drained from one Redis and from the local cluster."""
    results = {"events": events, "sales": sales_n, "runs": []}
    for name, url in (("one Redis", BENCH_REDIS_URL), ("local cluster", cluster_url())):
        settings = Settings(redis_url=url, database_url=BENCH_DATABASE_URL,
                            reconcile_batch=1000, reconcile_block_ms=50)
        await fresh_database(settings.database_url)
        redis = await open_redis(settings, max_connections=64)
        pool = await create_pool(settings, min_size=1, max_size=4)
        try:
            await redis.flushdb()
            sales, produce_s, made, masters = [], 0.0, 0, set()
            for _ in range(sales_n):
                sale, seconds = await make_backlog(settings, pool, redis, events // sales_n)
                sales.append(sale)
                produce_s += seconds
                made += await redis.xlen(f"fs:{{s:{sale}}}:events") - 1
                if hasattr(redis, "get_node_from_key"):
                    masters.add(redis.get_node_from_key(f"fs:{{s:{sale}}}:events").name)
            seconds = await drain(settings, pool, redis, *sales)
            rows = await pool.fetchval("SELECT count(*) FROM sale_reservations")
            results["runs"].append({
                "redis": name, "masters": len(masters) or 1, "events": made, "rows": rows,
                "seconds": round(seconds, 3), "events_per_second": round(made / seconds),
                "redis_produced_per_second": round(made / produce_s)})
        finally:
            await redis.flushdb()
            await redis.aclose()
            await pool.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="20,000 events (default)")
    group.add_argument("--full", action="store_true", help="100,000 events, three batch sizes")
    group.add_argument("--cluster", action="store_true",
                       help="three sales: one Redis vs the local Redis Cluster")
    args = parser.parse_args(argv)
    if args.cluster:
        results = uvloop.run(compare_cluster())
        base = results["runs"][0]["events_per_second"]
        print(table("Reconciler drain of three sales into Postgres, batch 1000",
                    ["Redis", "masters used", "events", "rows", "seconds",
                     "events/s into Postgres", "vs one Redis"],
                    [[r["redis"], r["masters"], r["events"], r["rows"], r["seconds"],
                      r["events_per_second"], f"{r['events_per_second'] / base:.2f}x"]
                     for r in results["runs"]]))
        path = write_results("reconciler", "cluster", results)
        print(f"\nwritten: {path.relative_to(path.parents[2])}")
        return 0
    mode = "full" if args.full else "quick"
    results = uvloop.run(main_async(mode))
    rows = [[r["batch"], r["events"], r["rows"], r["seconds"], r["events_per_second"],
             r["redis_produced_per_second"],
             f"{r['events_per_second'] / r['redis_produced_per_second']:.2f}x"]
            for r in results["runs"]]
    print(table(f"Reconciler drain into Postgres (fsync={results['fsync']}, "
                f"synchronous_commit={results['synchronous_commit']})",
                ["batch", "events", "rows", "seconds", "events/s into Postgres",
                 "events/s made by Redis", "drain/produce"], rows))
    path = write_results("reconciler", mode, results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
