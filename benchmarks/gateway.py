"""The gateway's reservation endpoint against bare aiohttp, same load generator, same
connections, same run.

    python -m benchmarks.gateway --quick      (3 rounds of 2 s per case, about a minute)
    python -m benchmarks.gateway --full       (3 rounds of 10 s per case)
    ... --rounds 7 --workers 1 --pin          (more rounds; 1 worker only; the server on
                                               CPU 0, wrk and Redis on CPU 1)
    ... --unix                                (the gateway reaches Redis over a Unix socket)

Load comes from wrk when it is installed (a Lua script posts a reservation body with a
unique idempotency key per request), else from an in-process aiohttp client. For 1 and 2
workers and 8 and 64 connections it prints throughput, p50/p99/p999 and the ratio of the
reservation endpoint to the bare one (rate, p50 and p99; bare and reserve alternate in
rounds: the medians are compared, and each round with the bare round before it, the
median of those ratios given as ``paired``), also for a sold-out sale and for the same gateway
with its hot lane off (``no_lane``, FLASHSALE_HOT_LANE=0), plus how the CPU split between
the gateway, Redis and the load generator. Writes JSON and a latency CDF (PNG) to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

from accounts.tokens import TokenSigner
from benchmarks.common import (
    BENCH_DATABASE_URL,
    BENCH_REDIS_URL,
    RESULTS,
    latency_summary,
    private_redis,
    table,
    write_results,
)
from benchmarks.machine import cpu_seconds as process_cpu_seconds
from cli.stack import free_port
from engine.connections import create_redis
from engine.keys import sale_keys
from engine.scripts import SCRIPTS
from engine.settings import Settings

HERE = Path(__file__).resolve().parent
SECRET = "benchmark-secret-0123456789abcdef0123456789"
SALE = 1
# Sold out before the run (its one unit sold elsewhere), so the benchmark's one buyer holds
# nothing there: a worker that admitted a buyer lets that buyer's attempts reach the script.
SOLD_OUT_SALE = 2
ROUNDS = 3
ENDPOINTS = ("bare", "reserve", "sold_out", "no_lane")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children still alive (workers), from /proc."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    return sum(process_cpu_seconds(p) for p in pids)


def pinned(cpus: str | None) -> list[str]:
    """The command prefix that runs a process (and what it forks) on ``cpus`` only."""
    return ["taskset", "-c", cpus] if cpus else []


class Server:
    def __init__(self, args: list[str], env: dict[str, str], port: int,
                 cpus: str | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen([*pinned(cpus), sys.executable, "-m", *args],
                                     env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self, path: str) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}{path}") as r:
                        if r.status < 500:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"server on {self.port} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def reset_sale(redis) -> None:
    await redis.flushdb()
    await SCRIPTS.load_tokens(redis, sale_keys(SALE).for_load,
                              (1, "9.99", 0, 0, 10**9, 600_000, 10**9, 10**9, 0, 0, "bench"))
    await SCRIPTS.load_tokens(redis, sale_keys(SOLD_OUT_SALE).for_load,
                              (1, "9.99", 0, 0, 10**9, 600_000, 0, 1, 0, 1, "bench"))


def run_wrk(url: str, path: str, token: str, conns: int, seconds: float,
            cpus: str | None = None) -> dict:
    env = {**os.environ, "WRK_PATH": path, "WRK_TOKEN": token}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([*pinned(cpus), "wrk", "-t", "1", "-c", str(conns), "-d",
                           f"{max(1, int(seconds))}s", "--timeout", "5s",
                           "-s", str(HERE / "wrk" / "post.lua"), url],
                          env=env, capture_output=True, text=True, timeout=seconds + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"wrk gave no summary: {done.stdout[-400:]} {done.stderr[-400:]}")
    data = json.loads(lines[0][len("WRK_JSON "):])
    pct = {float(k): v / 1000 for k, v in data["percentiles_us"].items()}
    return {"requests": data["requests"], "seconds": data["duration_us"] / 1e6,
            "per_second": data["requests"] / (data["duration_us"] / 1e6),
            "non_2xx": data["non_2xx"], "socket_errors": data["socket_errors"],
            "p50_ms": pct[50.0], "p99_ms": pct[99.0], "p999_ms": pct[99.9], "cdf_ms": pct,
            "loadgen_cpu_s": (after.ru_utime + after.ru_stime)
                              - (before.ru_utime + before.ru_stime)}


async def run_inprocess(url: str, token: str, conns: int, seconds: float) -> dict:
    latencies: list[float] = []
    bad = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal bad
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            body = {"quantity": 1, "idempotency_key": f"p{next(counter)}"}
            async with http.post(url, json=body, headers=headers) as resp:
                await resp.read()
                bad += resp.status >= 300
            latencies.append(time.perf_counter() - started)

    cpu0 = time.process_time()
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as http:
        await asyncio.gather(*(worker(http) for _ in range(conns)))
    elapsed = time.perf_counter() - started
    summary = latency_summary(latencies)
    return {"requests": len(latencies), "seconds": elapsed,
            "per_second": len(latencies) / elapsed, "non_2xx": bad, "socket_errors": 0,
            **summary, "cdf_ms": {}, "loadgen_cpu_s": time.process_time() - cpu0}


async def measure(name: str, server: Server, url: str, token: str, conns: int,
                  seconds: float, redis_pid: int, load_cpus: str | None = None) -> dict:
    before = (cpu_seconds(server.proc.pid), cpu_seconds(redis_pid))
    if shutil.which("wrk"):
        r = await asyncio.to_thread(run_wrk, url, url.split(str(server.port), 1)[1], token,
                                    conns, seconds, load_cpus)
    else:
        r = await run_inprocess(url, token, conns, seconds)
    after = (cpu_seconds(server.proc.pid), cpu_seconds(redis_pid))
    r["server_cpu_s"] = after[0] - before[0]
    r["redis_cpu_s"] = after[1] - before[1]
    return {"endpoint": name, "connections": conns, **r}


def median_round(runs: list[dict]) -> dict:
    """The round with the median rate, its p99 replaced by the median p99 of the rounds."""
    ordered = sorted(runs, key=lambda r: r["per_second"])
    middle = dict(ordered[len(ordered) // 2])
    middle["p99_ms"] = statistics.median(r["p99_ms"] for r in runs)
    return middle


def paired(rounds: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per endpoint, the median over rounds of its rate and p99 divided by those of the
    bare round just before it: a neighbour's burst or a slower minute moves both servers
    of a round, so the pairs cancel it where the medians of each alone do not (on this
    2-vCPU box one round's p99 ranges over 2-5x for the same server)."""
    out = {}
    for name, runs in rounds.items():
        pairs = list(zip(rounds["bare"], runs, strict=True))
        out[name] = {"rate": statistics.median(r["per_second"] / b["per_second"]
                                               for b, r in pairs),
                     "p99": statistics.median(r["p99_ms"] / b["p99_ms"] for b, r in pairs)}
    return out


async def bench_buyer(database_url: str) -> int:
    """A real account for the load's token: the gateway refuses tokens of unknown users."""
    import asyncpg

    from engine.migrate import migrate

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "INSERT INTO users (email, name, password_hash) VALUES"
            " ('gateway-bench-' || gen_random_uuid() || '@bench.flashsale', 'bench', '-')"
            " RETURNING user_id")
    finally:
        await conn.close()


async def main_async(mode: str, plan: argparse.Namespace) -> dict:
    # A private redis-server when one can be started: the shared one's other clients would
    # make the gateway wait on them and the ratio measure the neighbours.
    with private_redis(unix=plan.unix) as private:
        if private is None and plan.unix:
            raise SystemExit("--unix needs redis-server to start a private Redis")
        return await _run_cases(mode, private or BENCH_REDIS_URL, private is not None, plan)


async def _run_cases(mode: str, redis_url: str, private: bool, plan) -> dict:
    rounds_n, pin = plan.rounds, plan.pin and private  # never pin a server not ours
    seconds = (2.0 if mode == "quick" else 10.0) * rounds_n
    settings = Settings(redis_url=redis_url, database_url=BENCH_DATABASE_URL)
    redis = create_redis(settings)
    redis_pid = int((await redis.info("server"))["process_id"])
    token = TokenSigner(secret=SECRET, ttl_seconds=3600).issue(
        await bench_buyer(BENCH_DATABASE_URL), "customer")
    env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": BENCH_DATABASE_URL,
           "FLASHSALE_SECRET": SECRET, "FLASHSALE_RATE_LIMIT": "0"}
    results = {"load_generator": "wrk -t1" if shutil.which("wrk") else "in-process aiohttp",
               "seconds_per_case": seconds, "private_redis": private, "rounds": rounds_n,
               "redis_over": "a Unix socket" if redis_url.startswith("unix:") else "TCP",
               "pinned": "1 worker: servers on CPU 0, wrk and Redis on CPU 1" if pin else "",
               "cases": []}
    try:
        for workers in plan.workers:
            # Pinned (1 worker only): the server, bare or gateway alike, has CPU 0; wrk and
            # Redis share CPU 1, so Redis's CPU still counts against the gateway's rate.
            server_cpus, load_cpus = ("0", "1") if pin and workers == 1 else (None, None)
            os.sched_setaffinity(redis_pid, {1} if load_cpus else range(os.cpu_count() or 1))
            bare_port, gw_port, plain_port = free_port(), free_port(), free_port()
            bare = Server(["benchmarks.bare_server", "--port", str(bare_port), "--workers",
                           str(workers)], {}, bare_port, server_cpus)
            gateway = Server(["cli.main", "serve", "--port", str(gw_port), "--workers",
                              str(workers)], env, gw_port, server_cpus)
            # The same gateway with the hot lane off: what the lane saves, same run.
            plain = Server(["cli.main", "serve", "--port", str(plain_port), "--workers",
                            str(workers)], {**env, "FLASHSALE_HOT_LANE": "0"}, plain_port,
                           server_cpus)
            try:
                await bare.ready("/")
                await gateway.ready("/healthz")
                await plain.ready("/healthz")
                # A warm-up second per endpoint, not measured: the gateway's first requests
                # fill its caches (the token's account, the sale's buckets and room).
                targets = {"bare": (bare, f"http://127.0.0.1:{bare_port}/bare", ""),
                           "reserve": (gateway, f"http://127.0.0.1:{gw_port}/api/v1/sales/"
                                       f"{SALE}/reservations", token),
                           "sold_out": (gateway, f"http://127.0.0.1:{gw_port}/api/v1/sales/"
                                        f"{SOLD_OUT_SALE}/reservations", token),
                           "no_lane": (plain, f"http://127.0.0.1:{plain_port}/api/v1/sales/"
                                       f"{SALE}/reservations", token)}
                for server, url, bearer in targets.values():
                    await measure("warm-up", server, url, bearer, 64, 1, redis_pid, load_cpus)
                for conns in (8, 64):
                    # The sale is reset once per case, then taken for 2 s unmeasured: the
                    # first seconds after a reset cost Redis up to half again as much CPU
                    # per reservation here (its memory is touched afresh, its tables grow),
                    # which a reset before every round charged to the reserve rounds only
                    # (benchmarks/README.md: "A reset in every round").
                    await reset_sale(redis)
                    await measure("warm-up", gateway, targets["reserve"][1], token, conns, 2,
                                  redis_pid, load_cpus)
                    # Bare and reserve alternate in short rounds, so a neighbour's burst on
                    # a shared machine slows one round, not one endpoint; medians reported.
                    rounds: dict[str, list[dict]] = {name: [] for name in ENDPOINTS}
                    each = seconds / rounds_n
                    for _ in range(rounds_n):
                        for name, (server, url, bearer) in targets.items():
                            rounds[name].append(await measure(
                                name, server, url, bearer, conns, each, redis_pid, load_cpus))
                    case = {"workers": workers, "connections": conns, "rounds": rounds,
                            **{name: median_round(rounds[name]) for name in ENDPOINTS}}
                    case["ratio"] = case["reserve"]["per_second"] / case["bare"]["per_second"]
                    case["p99_ratio"] = case["reserve"]["p99_ms"] / case["bare"]["p99_ms"]
                    case["sold_out_ratio"] = (case["sold_out"]["per_second"]
                                              / case["bare"]["per_second"])
                    case["no_lane_ratio"] = (case["no_lane"]["per_second"]
                                             / case["bare"]["per_second"])
                    case["paired"] = paired(rounds)
                    results["cases"].append(case)
            finally:
                bare.stop()
                gateway.stop()
                plain.stop()
    finally:
        await redis.flushdb()
        await redis.aclose()
    return results


def cdf_png(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for case in results["cases"]:
        for name in ("bare", "reserve"):
            cdf = case[name].get("cdf_ms") or {}
            if not cdf:
                continue
            points = sorted((float(q), ms) for q, ms in cdf.items())  # str keys from JSON
            ax.plot([ms for _, ms in points], [q for q, _ in points], marker=".",
                    label=f"{name}, {case['workers']} worker(s), {case['connections']} conns")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("percentile")
    ax.set_title("Gateway latency CDF: reservation endpoint vs bare aiohttp")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: dict) -> str:
    rows = []
    for c in results["cases"]:
        for name in ENDPOINTS:
            r = c.get(name)
            if r is None:
                continue
            total = (r["server_cpu_s"] or 0) + (r["redis_cpu_s"] or 0) + (r["loadgen_cpu_s"] or 0)
            split = (f"{r['server_cpu_s'] / r['seconds']:.2f}/{r['redis_cpu_s'] / r['seconds']:.2f}"
                     f"/{(r['loadgen_cpu_s'] or 0) / r['seconds']:.2f}") if total else "-"
            # A sold-out sale answers 409 by design: those are not errors.
            errors = r["socket_errors"] + (r["non_2xx"] if name != "sold_out" else 0)
            rate = {"bare": 1.0, "reserve": c["ratio"],
                    "sold_out": c.get("sold_out_ratio", 0.0),
                    "no_lane": c.get("no_lane_ratio", 0.0)}[name]
            cpu_us = (r["server_cpu_s"] or 0) * 1e6 / max(r["requests"], 1)
            pair = c.get("paired", {}).get(name)
            rows.append([c["workers"], c["connections"], name, r["per_second"], r["p50_ms"],
                         r["p99_ms"], r["p999_ms"], errors, split, cpu_us, f"{rate:.2f}x",
                         f"{r['p50_ms'] / c['bare']['p50_ms']:.2f}x",
                         f"{r['p99_ms'] / c['bare']['p99_ms']:.2f}x",
                         f"{pair['rate']:.2f}x" if pair else "-",
                         f"{pair['p99']:.2f}x" if pair else "-"])
    return table(f"Gateway: POST reservation vs bare aiohttp ({results['load_generator']}; "
                 f"median of {results['rounds']} alternated rounds; "
                 + (f"pinned: {results['pinned']}; " if results["pinned"] else "")
                 + f"Redis over {results.get('redis_over', 'TCP')}; "
                 + "sold_out = a sold-out sale, answered 409 by the worker's flag; "
                 "no_lane = reserve on a gateway with FLASHSALE_HOT_LANE=0; ratios: of the "
                 "medians, and paired = median of each round's ratio to the bare round "
                 "before it)",
                 ["workers", "conns", "endpoint", "req/s", "p50 ms", "p99 ms", "p999 ms",
                  "errors", "cores gw/redis/load", "gw CPU µs/req", "rate ratio", "p50 ratio",
                  "p99 ratio",
                  "rate paired", "p99 paired"],
                 rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="rounds of 2 s per case (default)")
    group.add_argument("--full", action="store_true", help="rounds of 10 s per case")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternated rounds per case")
    parser.add_argument("--workers", type=lambda v: [int(w) for w in v.split(",")],
                        default=[1, 2], help="gateway workers per case, e.g. 1 or 1,2")
    parser.add_argument("--pin", action="store_true",
                        help="1 worker: bare and gateway on CPU 0, wrk and Redis on CPU 1")
    parser.add_argument("--unix", action="store_true",
                        help="the gateway reaches its private Redis over a Unix socket")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    results = uvloop.run(main_async(mode, args))
    print(report(results))
    png = cdf_png(results, RESULTS / f"gateway-latency-cdf-{mode}{'-pinned' * args.pin}"
                                     f"{'-unix' * args.unix}.png")
    path = write_results("gateway", mode + ("-pinned" if args.pin else "")
                         + ("-unix" if args.unix else ""), results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}"
          + (f", {png.relative_to(png.parents[2])}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
