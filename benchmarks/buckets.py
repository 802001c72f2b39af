"""One hot sale: a single redis-server vs the local Redis Cluster (`make cluster`) without
and with 3 buckets, same run; and how long a buyer can be told sold_out while another
bucket still has tokens.

    python -m benchmarks.buckets --quick     (about 40 s; also part of benchmarks.admission)
    python -m benchmarks.buckets --full

- Rate: 64 callers on one sale through `Admission` (auto-batched; on the cluster one
  batcher per master), buyers spread evenly over the buckets (user mod K): admissions
  per second on one private redis-server (1 bucket), on the cluster with 1 bucket (the
  whole sale on one master) and with 3 buckets on 3 masters; each master's share of the
  script calls and its Redis µs per script call (`INFO commandstats` per node, so the
  admissions one shard can carry, with and without buckets, follow).
- Stale sold_out: 300 buyers x 3 attempts on 150 units over 3 buckets, buyers homed
  unevenly (200 in bucket 0, 100 in bucket 1, none in bucket 2: bucket 2's units reach
  buyers only by moving), repeated; for every sold_out answer, how long before the last
  admission of its run it came (an admission after it proves a unit was still there;
  an admission's moment is the Redis clock its reservation id carries).

All on this one machine: the cluster's six processes and the load generator share two
cores, so the rate shows the routing and the per-master split, not the speed-up a core
per master gives (docs/capacity.md does that arithmetic from the per-shard figures).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import time

import redis.asyncio as aioredis
import uvloop

from benchmarks.cluster import SCRIPT, start_cluster
from benchmarks.common import latency_summary, private_redis, table, write_results
from engine.admission import Admission
from engine.buckets import all_keys, shares
from engine.errors import PurchaseLimitExceeded, SoldOut
from engine.keys import reservation_number
from engine.scripts import SCRIPTS

TOKENS = 10**9
CALLERS = 64


async def load(client, sale: int, quantity: int, buckets: int, limit: int = 10**6) -> None:
    for keys in all_keys(sale, buckets):
        await client.delete(*keys.all)
    for bucket, share in reversed(list(enumerate(shares(quantity, buckets)))):
        await SCRIPTS.load_tokens(client, all_keys(sale, buckets)[bucket].for_load, (
            1, "9.99", 0, 0, limit, 600_000, share, share, 0, 0, "bench", 0, buckets))


async def admit(admission: Admission, sale: int, seconds: float) -> dict:
    users = itertools.count(1)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await admission.reserve(sale, next(users), 1, "k")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    elapsed = time.perf_counter() - started
    return {"admissions": len(latencies), "per_second": len(latencies) / elapsed,
            "elapsed": elapsed, **latency_summary(latencies)}


async def script_stats(nodes: list[tuple[str, int]]) -> dict[str, tuple[int, float]]:
    """(EVALSHA calls, total µs) per node."""
    stats = {}
    for host, port in nodes:
        client = aioredis.Redis(host=host, port=port)
        try:
            row = (await client.info("commandstats")).get("cmdstat_evalsha", {})
        finally:
            await client.aclose()
        stats[f"{host}:{port}"] = (row.get("calls", 0), float(row.get("usec", 0)))
    return stats


def spread(before: dict, after: dict, seconds: float) -> dict:
    """Per master: its share of the script calls, Redis µs per call, and how busy the
    scripts kept it (Redis ms per second of the run)."""
    moved = {n: (after[n][0] - before.get(n, (0, 0.0))[0],
                 after[n][1] - before.get(n, (0, 0.0))[1]) for n in after}
    total = sum(calls for calls, _ in moved.values()) or 1
    return {n: {"share": round(calls / total, 3),
                "usec_per_call": round(usec / calls, 2) if calls else 0.0,
                "busy_ms_per_s": round(usec / 1000 / seconds, 1)}
            for n, (calls, usec) in sorted(moved.items())}


def ceiling(row: dict) -> float:
    """Admissions per second at which the busiest master's scripts would fill its core:
    the measured rate over the busiest master's busy fraction (a projection for masters
    with a core each; here they share the machine)."""
    busiest = max(m["busy_ms_per_s"] for m in row["masters"].values()) / 1000
    return row["per_second"] / busiest if busiest else 0.0


def spread_sale(cluster: aioredis.RedisCluster, buckets: int, masters: int) -> int:
    for sale in range(1000, 100_000):
        names = {cluster.get_node_from_key(k.meta).name for k in all_keys(sale, buckets)}
        if len(names) == masters:
            return sale
    raise RuntimeError("the cluster has fewer masters than asked")


BUYERS = [3 * i for i in range(1, 201)] + [3 * i + 1 for i in range(1, 101)]


async def stale_sold_out(client, sale: int, runs: int) -> dict:
    """Over ``runs`` runs of the uneven 300-buyer scenario: the sold_out answers after
    which a unit was still admitted, and by how long at most. An admission's moment is
    Redis's own (its reservation id's n is the Redis clock in microseconds when the
    script ran, engine/keys.py; Redis runs on this machine, same clock), a sold_out's is
    when the buyer got the answer: a unit taken later was there when the buyer was told."""
    worst, early, answers, steals, sold = 0.0, 0, 0, 0, []
    for _ in range(runs):
        await load(client, sale, 150, 3, limit=2)
        workers = [Admission(client) for _ in range(3)]
        for w in workers:
            await w.start()
        told: list[float] = []
        admitted: list[float] = []

        async def buyer(user: int, workers=workers, told=told, admitted=admitted) -> None:
            for attempt in range(3):
                try:
                    hold = await workers[(user + attempt) % 3].reserve(sale, user, 1,
                                                                        f"a{attempt}")
                    admitted.append(reservation_number(hold.reservation_id) / 1e6)
                except SoldOut:
                    told.append(time.time())
                except PurchaseLimitExceeded:
                    pass

        await asyncio.gather(*(buyer(u) for u in BUYERS))
        for w in workers:
            steals += w.steals
            await w.close()
        last = max(admitted)
        before_last = [last - t for t in told if t < last]
        early += len(before_last)
        answers += len(told)
        worst = max(worst, max(before_last, default=0.0))
        sold.append(len(admitted))
    return {"runs": runs, "sold_per_run": sold, "sold_out_answers": answers,
            "told_before_last_admission": early, "worst_ms": round(worst * 1000, 2),
            "retries_after_a_transfer": steals}


async def measure(mode: str) -> dict:
    seconds = 3.0 if mode == "quick" else 10.0
    url, started, why = start_cluster()
    if url is None:
        return {"skipped": f"the local Redis Cluster could not start: {why}"}
    cluster = aioredis.RedisCluster.from_url(url, socket_timeout=5.0)
    await cluster.initialize()
    results: dict = {"seconds_per_case": seconds, "callers": CALLERS}
    try:
        hot = spread_sale(cluster, 3, 3)
        with private_redis() as single_url:
            single = aioredis.Redis.from_url(single_url)
            await load(single, hot, TOKENS, 1)
            adm = Admission(single)
            results["single"] = await admit(adm, hot, seconds)
            await adm.close()
            await single.aclose()
        masters = [(n.host, n.port) for n in cluster.get_primaries()]
        for buckets in (1, 3):
            await load(cluster, hot, TOKENS, buckets)
            before = await script_stats(masters)
            adm = Admission(cluster)
            row = await admit(adm, hot, seconds)
            await adm.close()
            row["masters"] = spread(before, await script_stats(masters), row["elapsed"])
            row["ceiling_per_second"] = round(ceiling(row))
            results[f"cluster_{buckets}"] = row
        results["stale_sold_out"] = await stale_sold_out(cluster, hot,
                                                         runs=5 if mode == "quick" else 20)
        for buckets in (1, 3):
            for keys in all_keys(hot, buckets):
                await cluster.delete(*keys.all)
    finally:
        await cluster.aclose()
        if started:
            subprocess.run(["bash", str(SCRIPT), "stop"], timeout=60)
    return results


def report(results: dict | None) -> str:
    if not results:
        return ""
    if "skipped" in results:
        return f"buckets: skipped ({results['skipped']})"
    single = results["single"]
    rows = [["one redis-server, 1 bucket", single["per_second"], single["p50_ms"],
             single["p99_ms"], "1.00x", "-", "-", "-"]]
    one = results["cluster_1"].get("ceiling_per_second") or 1
    for buckets in (1, 3):
        r = results[f"cluster_{buckets}"]
        split = ", ".join(f"{m['share']:.0%} ({m['usec_per_call']} µs, {m['busy_ms_per_s']})"
                          for m in r["masters"].values())
        rows.append([f"cluster, {buckets} bucket{'s' if buckets > 1 else ''}", r["per_second"],
                     r["p50_ms"], r["p99_ms"], f"{r['per_second'] / single['per_second']:.2f}x",
                     split, r["ceiling_per_second"],
                     f"{r['ceiling_per_second'] / one:.2f}x"])
    rate = table(f"One hot sale, {results['callers']} callers: one Redis vs the local cluster "
                 "without and with 3 buckets (same run, same machine; ceiling = the rate at "
                 "which the busiest master's scripts fill one core)",
                 ["where", "admissions/s", "p50 ms", "p99 ms", "ratio",
                  "each master: share of calls (Redis µs per call, Redis ms per s)",
                  "ceiling/s", "ceiling ratio"], rows)
    s = results["stale_sold_out"]
    stale = table("Sold out while a bucket still had a unit: 300 buyers x 3 attempts, 150 "
                  "units over 3 buckets, buyers homed unevenly",
                  ["runs", "units sold per run", "sold_out answers",
                   "of them before the run's last admission", "worst, ms",
                   "retries after a transfer"],
                  [[s["runs"], "/".join(str(n) for n in sorted(set(s["sold_per_run"]))),
                    s["sold_out_answers"], s["told_before_last_admission"], s["worst_ms"],
                    s["retries_after_a_transfer"]]])
    return rate + "\n\n" + stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="3 s per case (default)")
    group.add_argument("--full", action="store_true", help="10 s per case")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    results = uvloop.run(measure(mode))
    print(report(results))
    path = write_results("buckets", mode, results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
