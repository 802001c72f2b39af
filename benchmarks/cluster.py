"""The gate on the local Redis Cluster (`make cluster`: 3 masters + 3 replicas) against one
private redis-server, same run, and what FLASHSALE_REDIS_WAIT_REPLICAS costs.

    python -m benchmarks.cluster --quick     (about 40 s)
    python -m benchmarks.cluster --full

- Spread: three sales, 64 callers each, through `Admission` (auto-batched; on the
  cluster one batcher per master): admissions per second on one Redis and on the
  cluster, and each master's share of the script calls (`INFO commandstats` per node).
- WAIT: one sale on the cluster, 64 callers, without and with `wait_replicas=1`
  (a hold is answered once its master's replica has it), alternated rounds, medians.

All on this one machine: the cluster's six processes share its cores, so the spread
shows the routing and the per-master split, not a real speed-up (that needs a core or a
machine per master; docs/capacity.md does the arithmetic).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

from benchmarks.common import latency_summary, private_redis, table, write_results
from engine.admission import Admission
from engine.keys import sale_keys
from engine.scripts import SCRIPTS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster.sh"
_users = itertools.count(1)


def start_cluster() -> tuple[str | None, bool, str]:
    """(url, started here, why not) for the local cluster."""
    running = subprocess.run(["bash", str(SCRIPT), "url"], capture_output=True, text=True)
    if running.returncode == 0:
        return running.stdout.strip(), False, ""
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, False, done.stderr.strip()
    return done.stdout.strip().splitlines()[-1], True, ""


async def load(client, sale: int) -> None:
    await client.delete(*sale_keys(sale).all)
    await SCRIPTS.load_tokens(client, sale_keys(sale).for_load, (
        1, "9.99", 0, 0, 10**9, 600_000, 10**9, 10**9, 0, 0, "bench"))


async def admit(admission: Admission, sales: list[int], seconds: float,
                callers: int = 64) -> dict:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(sale: int) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await admission.reserve(sale, next(_users), 1, "k")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(s) for s in sales for _ in range(callers)))
    elapsed = time.perf_counter() - started
    return {"admissions": len(latencies), "per_second": len(latencies) / elapsed,
            **latency_summary(latencies)}


def spread_sales(cluster: aioredis.RedisCluster) -> list[int]:
    chosen, masters = [], set()
    for sale in range(100, 10_000):
        name = cluster.get_node_from_key(sale_keys(sale).meta).name
        if name not in masters:
            masters.add(name)
            chosen.append(sale)
        if len(chosen) == 3:
            return chosen
    raise RuntimeError("the cluster has fewer than 3 masters")


async def evalsha_calls(cluster: aioredis.RedisCluster) -> dict[str, int]:
    calls = {}
    for node in cluster.get_primaries():
        client = aioredis.Redis(host=node.host, port=node.port)
        try:
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
        calls[node.name] = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    return calls


async def main_async(mode: str) -> dict:
    seconds = 3.0 if mode == "quick" else 10.0
    url, started, why = start_cluster()
    if url is None:
        return {"skipped": f"the local Redis Cluster could not start: {why}"}
    cluster = aioredis.RedisCluster.from_url(url, socket_timeout=5.0)
    await cluster.initialize()
    results: dict = {"seconds_per_case": seconds}
    try:
        sales = spread_sales(cluster)
        with private_redis() as single_url:
            single = aioredis.Redis.from_url(single_url)
            for sale in sales:
                await load(single, sale)
            adm = Admission(single)
            results["single"] = await admit(adm, sales, seconds)
            await adm.close()
            await single.aclose()
        for sale in sales:
            await load(cluster, sale)
        before = await evalsha_calls(cluster)
        adm = Admission(cluster)
        results["cluster"] = await admit(adm, sales, seconds)
        await adm.close()
        after = await evalsha_calls(cluster)
        total = sum(after[n] - before.get(n, 0) for n in after) or 1
        results["cluster"]["share"] = {n: round((after[n] - before.get(n, 0)) / total, 3)
                                       for n in after}
        rounds: dict[int, list[dict]] = {0: [], 1: []}
        for _ in range(3):
            for wait in (0, 1):
                await load(cluster, sales[0])
                adm = Admission(cluster, wait_replicas=wait)
                rounds[wait].append(await admit(adm, sales[:1], seconds / 3))
                await adm.close()
        results["wait"] = {str(w): {k: statistics.median(r[k] for r in runs)
                                    for k in ("per_second", "p50_ms", "p99_ms")}
                           for w, runs in rounds.items()}
        await cluster.flushdb()
    finally:
        await cluster.aclose()
        if started:
            subprocess.run(["bash", str(SCRIPT), "stop"], timeout=60)
    return results


def report(results: dict) -> str:
    if "skipped" in results:
        return f"cluster: skipped ({results['skipped']})"
    single, cluster = results["single"], results["cluster"]
    share = ", ".join(f"{n} {v:.0%}" for n, v in sorted(cluster["share"].items()))
    spread = table(
        "Three sales, 64 callers each: one Redis vs the local cluster (same machine)",
        ["where", "admissions/s", "p50 ms", "p99 ms", "ratio", "share of script calls"],
        [["one redis-server", single["per_second"], single["p50_ms"], single["p99_ms"],
          "1.00x", "-"],
         ["cluster, 3 masters", cluster["per_second"], cluster["p50_ms"], cluster["p99_ms"],
          f"{cluster['per_second'] / single['per_second']:.2f}x", share]])
    w0, w1 = results["wait"]["0"], results["wait"]["1"]
    wait = table(
        "One sale on the cluster, 64 callers: FLASHSALE_REDIS_WAIT_REPLICAS (median of 3 "
        "alternated rounds)",
        ["wait replicas", "admissions/s", "p50 ms", "p99 ms", "ratio"],
        [["0", w0["per_second"], w0["p50_ms"], w0["p99_ms"], "1.00x"],
         ["1", w1["per_second"], w1["p50_ms"], w1["p99_ms"],
          f"{w1['per_second'] / w0['per_second']:.2f}x"]])
    return spread + "\n\n" + wait


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="3 s per case (default)")
    group.add_argument("--full", action="store_true", help="10 s per case")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    results = uvloop.run(main_async(mode))
    print(report(results))
    path = write_results("cluster", mode, results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
