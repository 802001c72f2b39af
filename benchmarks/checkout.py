"""Checkout latency at a steady 200 orders per second, over HTTP, open loop.

    python -m benchmarks.checkout --quick     (20 s measured, under a minute in all)
    python -m benchmarks.checkout --full      (120 s measured)

Seeds its own database (flashsale_bench_orders) and Redis db (11): buyers with an address,
a card (approved test card) and a funded wallet, a catalog, a cart of 1-3 lines for every
cart buyer, and a live flash-sale hold for every flash buyer. Starts a gateway
(``flashsale serve``) in a subprocess, then schedules one checkout every 1/rate seconds
whatever the answers (open loop: a slow answer does not slow the arrivals) and measures
each latency from its scheduled time, so queueing delay counts. The mix: 70% cart by card,
20% cart by wallet (10% of cart orders with a coupon), 10% flash holds by card.

Prints p50/p90/p99/p999 and the answers in a table, checks that Postgres agrees (one paid
order per 201, stock never below zero), and writes benchmarks/results/checkout-<mode>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import signal
import sys
import time
from collections import Counter
from typing import NamedTuple

import aiohttp
import asyncpg
import uvloop

from benchmarks.checkout_seed import DATABASE, SECRET, bench_settings, reset, seed
from benchmarks.common import latency_summary, percentile, table, write_results
from benchmarks.machine import Autovacuum, CpuWatch, cpu_seconds
from cli.stack import free_port
from engine.settings import Settings

MODES = {"quick": {"seconds": 20.0, "warmup": 3.0}, "full": {"seconds": 120.0, "warmup": 10.0}}


# -- the gateway -------------------------------------------------------------------------
async def start_gateway(settings: Settings, port: int, workers: int
                        ) -> asyncio.subprocess.Process:
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": SECRET,
           "FLASHSALE_RATE_LIMIT": "0", "FLASHSALE_DB_POOL_MAX": str(settings.db_pool_max)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers",
        str(workers), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            if proc.returncode is not None:
                raise RuntimeError((await proc.stderr.read()).decode())
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the gateway did not become ready")


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- the load ----------------------------------------------------------------------------
class Sample(NamedTuple):
    """One answer. A tuple of atomic values: the garbage collector stops tracking it, so a
    long run's samples do not make the load generator's own GC pauses grow."""
    kind: str
    status: int | str
    key: str
    latency: float  # from the scheduled time
    service: float  # from the moment it was sent
    lag: float  # sent - scheduled: the load generator's own delay
    done: float


async def drive(url: str, requests: list[dict], rate: float) -> list[Sample]:
    """Send request i at start + i/rate (open loop); latency from that scheduled time."""
    results: list[Sample] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
        start = clock() + 0.2

        async def one(scheduled: float, req: dict) -> None:
            sent = clock()
            try:
                async with session.post(url, json=req["body"], headers=req["headers"]) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as exc:
                status = f"error: {type(exc).__name__}"
            done = clock()
            results.append(Sample(req["kind"], status, req["body"]["idempotency_key"],
                                  done - scheduled, done - sent, sent - scheduled, done - start))

        # Each arrival is started at its time, whatever happened to the earlier ones; the
        # tasks are created as they are due, not all at once (that would stall the start).
        in_flight: set[asyncio.Task] = set()
        for i, req in enumerate(requests):
            scheduled = start + i / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled, req))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    return results


async def verify(settings: Settings, created_keys: list[str]) -> dict:
    """Postgres agrees with the answers: every 201 is a paid order, every paid order
    belongs to a completed checkout (a 503'd one may have been completed by recovery),
    nothing is left running, no stock below zero."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        paid = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'paid'")
        missing = await conn.fetchval(
            "SELECT count(*) FROM unnest($1::text[]) AS k(key) WHERE NOT EXISTS ("
            " SELECT 1 FROM orders o WHERE o.idempotency_key = k.key AND o.status = 'paid')",
            created_keys)
        completed = await conn.fetchval(
            "SELECT count(*) FROM checkouts WHERE state = 'completed'")
        negative = await conn.fetchval(
            "SELECT count(*) FROM inventory WHERE available_qty < 0 OR sold_qty < 0")
        unfinished = await conn.fetchval("SELECT count(*) FROM checkouts WHERE state = 'running'")
        money = await conn.fetchval("SELECT coalesce(sum(total), 0) FROM orders")
    finally:
        await conn.close()
    agree = missing == 0 and paid == completed and unfinished == 0 and negative == 0
    return {"answered_201": len(created_keys), "paid_orders": paid,
            "completed_checkouts": completed, "answered_201_without_order": missing,
            "checkouts_unfinished": unfinished, "negative_stock_rows": negative,
            "agree": agree, "revenue": str(money)}


def per_second(results: list[Sample]) -> list[dict]:
    """Latency by second of the run (scheduled time): shows a stall, not just a tail."""
    buckets: dict[int, list[float]] = {}
    for r in results:
        buckets.setdefault(int(r.done - r.latency), []).append(r.latency * 1000)
    return [{"second": sec, "orders": len(ms), "p50_ms": round(percentile(ms, 50), 1),
             "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1)}
            for sec, ms in sorted(buckets.items())]


async def run(mode: str, rate: float, seconds: float | None, seed_value: int,
              workers: int) -> dict:
    settings = bench_settings()
    plan = MODES[mode]
    seconds = seconds or plan["seconds"]
    warm_n, measured_n = int(plan["warmup"] * rate), int(seconds * rate)
    settle_n = int(2 * rate)
    rng = random.Random(seed_value)
    t = time.perf_counter()
    await reset(settings)
    requests = await seed(settings, warm_n + settle_n + measured_n, rng)
    seeded = time.perf_counter() - t
    # The seeded requests live for the whole run: out of the collector's way, so that its
    # pauses in this process are not measured as checkout latency.
    gc.collect()
    gc.freeze()
    port = free_port()
    proc = await start_gateway(settings, port, workers)
    url = f"http://127.0.0.1:{port}/api/v1/orders"
    try:
        warm = await drive(url, requests[:warm_n], rate)
        # The order tables start empty; a live database's are not. Statistics taken now
        # let the gateway's cached plans use their indexes (a plan made while a table
        # looked empty scans it whole, and is kept until the next analyze).
        upkeep = Autovacuum(settings)
        await upkeep.once(analyze_all=True)
        # The gateway plans its statements again with those statistics: not measured.
        warm += await drive(url, requests[warm_n:warm_n + settle_n], rate)
        upkeep.start()
        cpu_before = cpu_seconds(proc.pid)
        watch = CpuWatch(proc.pid, DATABASE)
        watch.start()
        results = await drive(url, requests[warm_n + settle_n:], rate)
        await watch.stop()
        await upkeep.stop()
        gateway_cpu = cpu_seconds(proc.pid) - cpu_before  # workers: their parent only
    finally:
        await stop_gateway(proc)
    statuses = Counter(str(r.status) for r in results)
    created = [r.key for r in warm + results if r.status == 201]
    elapsed = max(r.done for r in results)
    by_kind = {}
    for kind in ("card", "wallet", "flash"):
        mine = [r.latency for r in results if r.kind == kind]
        by_kind[kind] = {"orders": len(mine), **latency_summary(mine)}
    ms = [r.latency * 1000 for r in results]
    summary = {**latency_summary([r.latency for r in results]),
               "p90_ms": round(percentile(ms, 90), 3), "max_ms": round(max(ms), 3)}
    return {"rate_per_second": rate, "seconds": seconds, "workers": workers,
            "orders": len(results),
            "achieved_per_second": round(len(results) / elapsed, 1),
            "statuses": dict(statuses), "latency": summary,
            "service_time": latency_summary([r.service for r in results]),
            "send_lag": latency_summary([r.lag for r in results]),
            "by_kind": by_kind, "check": await verify(settings, created),
            "gateway_cpu_ms_per_order": round(gateway_cpu * 1000 / len(results), 3),
            "load_average_after": os.getloadavg()[0],
            "seed_seconds": round(seeded, 1), "warmup_orders": warm_n + settle_n,
            "autovacuum": {"vacuums": upkeep.vacuums, "analyzes": upkeep.analyzes},
            "warmup_statuses": dict(Counter(str(r.status) for r in warm)),
            "per_second": [{**sec, **cpu} for sec, cpu in
                           zip(per_second(results), watch.samples, strict=False)],
            "machine_busy_pct": round(sum(c["busy_pct"] for c in watch.samples)
                                      / max(1, len(watch.samples)), 1),
            "others_cpu_pct_max": max((c["others_pct"] for c in watch.samples), default=0.0)}


def report(mode: str, data: dict) -> str:
    lat, svc = data["latency"], data["service_time"]
    rows = [["all (from scheduled time)", data["orders"], lat["p50_ms"], lat["p90_ms"],
             lat["p99_ms"], lat["p999_ms"], lat["max_ms"]],
            ["all (service time)", data["orders"], svc["p50_ms"], "", svc["p99_ms"],
             svc["p999_ms"], ""]]
    for kind, s in data["by_kind"].items():
        rows.append([f"{kind} (from scheduled time)", s["orders"], s["p50_ms"], "",
                     s["p99_ms"], s["p999_ms"], ""])
    out = table(f"checkout at {data['rate_per_second']:.0f}/s for {data['seconds']:.0f} s "
                f"({mode}, {data['workers']} gateway worker(s)), open loop, ms",
                ["orders", "n", "p50", "p90", "p99", "p999", "max"], rows)
    check = data["check"]
    worst = max(data["per_second"], key=lambda b: b["p99_ms"])
    return (f"{out}\n\nachieved {data['achieved_per_second']}/s; answers {data['statuses']}; "
            f"gateway CPU {data['gateway_cpu_ms_per_order']} ms per order; machine busy "
            f"{data['machine_busy_pct']}% of {os.cpu_count()} CPUs; worst second: "
            f"#{worst['second']} p99 {worst['p99_ms']} ms (other processes then used "
            f"{worst.get('others_pct', '?')}% of the machine; at most "
            f"{data['others_cpu_pct_max']}% during the run)\n"
            f"Postgres agrees: {check['agree']} ({check['paid_orders']} paid orders, "
            f"{check['answered_201']} answered 201 (warm-up included), "
            f"{check['answered_201_without_order']} of them without an order, "
            f"{check['checkouts_unfinished']} checkouts unfinished, "
            f"{check['negative_stock_rows']} stock rows below zero)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkout",
                                     description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_const", dest="mode", const="quick")
    which.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=None, help="measured duration")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    args = parser.parse_args(argv)
    mode = args.mode or "quick"
    data = uvloop.run(run(mode, args.rate, args.seconds, args.seed, args.workers))
    print(report(mode, data))
    path = write_results("checkout", mode, data)
    print(f"\nwrote {path}")
    return 0 if data["check"]["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
