"""Engine admission throughput against real Redis, beside redis-benchmark running the same
script in the same run.

    python -m benchmarks.admission --quick     (about 25 s)
    python -m benchmarks.admission --full

In-process: N concurrent callers loop on ``Admission.reserve`` (auto-batched, and direct
EVALSHA per call) for a fixed time; throughput and per-call latency p50/p99. The ceiling:
``redis-benchmark`` sending EVALSHA of reserve.lua with the same keys and arguments, 50
clients unpipelined and pipelined by 16. The interesting number is the ratio.

Buckets (``benchmarks/buckets.py``): one hot sale on a single Redis vs the local Redis
Cluster without and with 3 buckets, each master's share of the calls, and how long a buyer
can be told sold_out while another bucket still has a unit (``--buckets`` runs only this
part; skipped with the reason when the cluster cannot start).

Durability: the same engine load against two private redis-servers started side by side
for this run (AOF ``appendfsync always`` as deploy/redis.conf ships it, and ``everysec``),
files on the working tree's disk; the cost of ``always`` is the ratio of the two
(``--durability`` runs only this part).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit

import uvloop

from benchmarks import buckets, gate_cost
from benchmarks.common import BENCH_REDIS_URL, latency_summary, table, write_results
from engine.admission import Admission
from engine.connections import create_redis
from engine.keys import sale_keys
from engine.scripts import SCRIPTS
from engine.settings import Settings

SALE = 1
TOKENS = 100_000_000


async def load_sale(redis) -> None:
    await redis.flushdb()
    await SCRIPTS.load_tokens(redis, sale_keys(SALE).for_load,
                              (1, "9.99", 0, 0, 1_000_000, 600_000, TOKENS, TOKENS, 0, 0, "bench"))
    await SCRIPTS.reserve.load(redis)


async def run_engine(redis, *, concurrency: int, seconds: float, batching: bool) -> dict:
    admission = Admission(redis, batching=batching)
    latencies: list[float] = []
    counter = iter(range(10**12))
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        record = latencies.append
        clock = time.perf_counter
        while clock() < stop_at:
            user = next(counter)
            started = clock()
            await admission.reserve(SALE, user, 1, "k")
            record(clock() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await admission.close()
    return {"calls": len(latencies), "per_second": len(latencies) / elapsed,
            **latency_summary(latencies)}


def redis_benchmark(url: str, *, requests: int, clients: int, pipeline: int) -> dict | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    parts = urlsplit(url)
    keys = sale_keys(SALE).for_reserve
    cmd = [exe, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
           "--dbnum", (parts.path.strip("/") or "0"), "-n", str(requests), "-c", str(clients),
           "-P", str(pipeline), "-r", "1000000000", "--csv",
           "EVALSHA", SCRIPTS.reserve.sha, str(len(keys)), *keys,
           str(SALE), "0", "", "__rand_int__", "1", "k", "bench"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    rows = list(csv.reader(io.StringIO(out)))
    data = rows[-1]
    header = rows[0]
    row = dict(zip(header, data, strict=False))
    return {"per_second": float(row["rps"]), "p50_ms": float(row.get("p50_latency_ms", 0)),
            "p99_ms": float(row.get("p99_latency_ms", 0))}


async def durability(mode: str) -> dict:
    """Admits per second under ``appendfsync always`` and ``everysec``, same run, same load;
    rounds alternate so a noisy neighbour hits both alike."""
    from chaos.servers import PrivateRedis

    seconds = 2.0 if mode == "quick" else 8.0
    rounds = 2 if mode == "quick" else 3
    servers = {policy: PrivateRedis(f"bench-{policy}", appendfsync=policy).start()
               for policy in ("always", "everysec")}
    clients = {policy: create_redis(Settings(redis_url=server.url), max_connections=256)
               for policy, server in servers.items()}
    runs: dict[str, list[dict]] = {"always": [], "everysec": []}
    try:
        for _ in range(rounds):
            for policy in ("everysec", "always"):
                for concurrency in (8, 64):
                    await load_sale(clients[policy])
                    r = await run_engine(clients[policy], concurrency=concurrency,
                                         seconds=seconds, batching=True)
                    runs[policy].append({"concurrency": concurrency, **r})
    finally:
        for client in clients.values():
            await client.aclose()
        for server in servers.values():
            server.remove()
    summary = []
    for concurrency in (8, 64):
        best = {policy: max((r for r in rows if r["concurrency"] == concurrency),
                            key=lambda r: r["per_second"]) for policy, rows in runs.items()}
        summary.append({"concurrency": concurrency,
                        "always": best["always"], "everysec": best["everysec"],
                        "ratio": best["always"]["per_second"] / best["everysec"]["per_second"]})
    return {"runs": runs, "summary": summary}


def durability_report(results: dict) -> str:
    rows = []
    for s in results["summary"]:
        for policy in ("everysec", "always"):
            r = s[policy]
            rows.append([f"appendfsync {policy}, {s['concurrency']} callers (auto-batched)",
                         r["per_second"], r["p50_ms"], r["p99_ms"],
                         "1.00x" if policy == "everysec" else f"{s['ratio']:.2f}x"])
    return table("Durability: admits/s under appendfsync always vs everysec (same run, "
                 "ratio vs everysec)", ["what", "admits/s", "p50 ms", "p99 ms", "ratio"], rows)


async def main_async(mode: str) -> dict:
    seconds = 2.5 if mode == "quick" else 10.0
    requests = 100_000 if mode == "quick" else 1_000_000
    settings = Settings(redis_url=BENCH_REDIS_URL)
    redis = create_redis(settings, max_connections=256)
    results: dict = {"engine": [], "redis_benchmark": {}}
    results["gate_cost"] = await gate_cost.measure(calls=20_000 if mode == "quick" else 100_000)
    try:
        await load_sale(redis)
        ceilings = (("50 clients", 50, 1), ("50 clients, pipeline 16", 50, 16))
        for label, clients, pipeline in ceilings:
            rb = await asyncio.to_thread(redis_benchmark, BENCH_REDIS_URL, requests=requests,
                                         clients=clients, pipeline=pipeline)
            if rb:
                results["redis_benchmark"][label] = rb
            await load_sale(redis)
        for batching in (True, False):
            for concurrency in (1, 8, 64):
                r = await run_engine(redis, concurrency=concurrency, seconds=seconds,
                                     batching=batching)
                results["engine"].append({"batching": batching, "concurrency": concurrency, **r})
                await load_sale(redis)
    finally:
        await redis.flushdb()
        await redis.aclose()
    results["durability"] = await durability(mode)
    results["buckets"] = await buckets.measure(mode)
    return results


def report(results: dict) -> str:
    ceiling = results["redis_benchmark"].get("50 clients", {}).get("per_second")
    rows = []
    for label, rb in results["redis_benchmark"].items():
        rows.append([f"redis-benchmark EVALSHA, {label}", rb["per_second"], rb["p50_ms"],
                     rb["p99_ms"], f"{rb['per_second'] / ceiling:.2f}x" if ceiling else "-"])
    for r in results["engine"]:
        name = (f"engine reserve(), {'auto-batched' if r['batching'] else 'one EVALSHA/call'}, "
                f"{r['concurrency']} callers")
        rows.append([name, r["per_second"], r["p50_ms"], r["p99_ms"],
                     f"{r['per_second'] / ceiling:.2f}x" if ceiling else "-"])
    parts = [table("Admission: reserve.lua on real Redis (ratio vs redis-benchmark, 50 clients)",
                   ["what", "calls/s", "p50 ms", "p99 ms", "ratio"], rows),
             gate_cost.report(results.get("gate_cost"))]
    if results.get("durability"):
        parts.append(durability_report(results["durability"]))
    if results.get("buckets"):
        parts.append(buckets.report(results["buckets"]))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few seconds per case (default)")
    group.add_argument("--full", action="store_true", help="longer runs, steadier numbers")
    parser.add_argument("--durability", action="store_true",
                        help="only the appendfsync always vs everysec comparison")
    parser.add_argument("--buckets", action="store_true",
                        help="only one hot sale on one Redis vs the cluster with 3 buckets")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    if args.buckets:
        return buckets.main(["--full"] if args.full else ["--quick"])
    if args.durability:
        results = {"durability": uvloop.run(durability(mode))}
        print(durability_report(results["durability"]))
        path = write_results("admission-durability", mode, results)
        print(f"\nwritten: {path.relative_to(path.parents[2])}")
        return 0
    results = uvloop.run(main_async(mode))
    print(report(results))
    path = write_results("admission", mode, results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
