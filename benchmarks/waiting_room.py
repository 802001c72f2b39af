"""The waiting room: what joining and looking cost, and how soon the line learns the sale
is over, against a rate-only room in the same run.

    python -m benchmarks.waiting_room --quick     (about a minute)
    python -m benchmarks.waiting_room --full      (a few minutes)

1. Throughput on one sale, one gateway worker, the same in-process aiohttp load generator
   and connections for every row: joins per second (each request a new buyer) and queue
   reads per second (buyers already in line), each as a ratio to bare aiohttp + uvloop
   answering the same method (``bare_server.py``) measured a few seconds earlier.
2. Time to learn sold out: thousands of buyers join a small sale at once and look at
   their ticket every POLL seconds; an admitted buyer reserves with the pass at once and
   pays at once (``confirm.lua``, the checkout saga's confirm step); a buyer is done when
   told ``sold_out`` (by the room, or by a 409 on reserving). Run twice on the same
   gateway: a stock-aware room and a rate-only room (same rate, no stock awareness, as
   the waiting rooms in use today). Reports when the last buyer knew, and how many
   passes went out for nothing.

Redis state is written straight into the benchmark's Redis db (no Postgres needed).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from accounts.tokens import TokenSigner
from benchmarks.common import (
    BENCH_DATABASE_URL,
    BENCH_REDIS_URL,
    fresh_database,
    latency_summary,
    table,
    write_results,
)
from benchmarks.gateway import Server
from cli.room_scenario import learn_sold_out
from cli.stack import free_port
from engine.admission import Admission
from engine.connections import create_redis
from engine.keys import room_keys, sale_keys
from engine.scripts import SCRIPTS
from engine.settings import Settings
from engine.waiting_room import RoomConfig, configure

HERE = Path(__file__).resolve().parent
SECRET = "benchmark-secret-0123456789abcdef0123456789"
MODES = {
    "quick": {"seconds": 4.0, "conns": 32, "buyers": 1000, "units": 30, "rate": 50,
              "poll": 1.0},
    "full": {"seconds": 15.0, "conns": 32, "buyers": 3000, "units": 50, "rate": 50,
             "poll": 1.0},
}


async def load_sale(redis, sale_id: int, units: int, room: RoomConfig) -> None:
    """A live sale with a room, straight into Redis (as Sales.create leaves it)."""
    await configure(redis, sale_id, room)
    await SCRIPTS.load_tokens(redis, sale_keys(sale_id).for_load,
                              (1, "9.99", 0, 0, 1, 600_000, units, units, 0, 0, "bench"))


def run_wrk(method: str, url: str, token_file: str, conns: int, seconds: float) -> dict:
    """wrk, one thread, ``conns`` connections, one token from ``token_file`` per request."""
    path = "/" + url.split("/", 3)[3]
    env = {**os.environ, "WRK_METHOD": method, "WRK_PATH": path, "WRK_TOKENS": token_file}
    done = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", f"{int(seconds)}s",
                           "--timeout", "5s", "-s", str(HERE / "wrk" / "queue.lua"), url],
                          env=env, capture_output=True, text=True, timeout=seconds + 30)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"wrk gave no summary: {done.stdout[-400:]} {done.stderr[-400:]}")
    data = json.loads(lines[0][len("WRK_JSON "):])
    pct = {float(k): v / 1000 for k, v in data["percentiles_us"].items()}
    return {"requests": data["requests"],
            "per_second": data["requests"] / (data["duration_us"] / 1e6),
            "errors": data["non_2xx"] + data["socket_errors"], "p50_ms": pct[50.0],
            "p99_ms": pct[99.0]}


async def closed_loop(method: str, url_of, headers_of, conns: int, seconds: float) -> dict:
    """``conns`` connections each sending the next request as soon as the last answered."""
    latencies: list[float] = []
    bad = 0
    deadline = time.perf_counter() + seconds
    counter = itertools.count()

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal bad
        while time.perf_counter() < deadline:
            n = next(counter)
            started = time.perf_counter()
            async with http.request(method, url_of(n), headers=headers_of(n)) as resp:
                await resp.read()
                bad += resp.status >= 300
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as http:
        await asyncio.gather(*(worker(http) for _ in range(conns)))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "per_second": len(latencies) / elapsed,
            "errors": bad, **latency_summary(latencies)}


async def tokens(count: int, first: int) -> list[dict[str, str]]:
    """Accounts ``first``.. in the benchmark's database (the gateway reads each token's
    account) and their bearer tokens."""
    import asyncpg

    conn = await asyncpg.connect(BENCH_DATABASE_URL)
    try:
        await conn.execute(
            "INSERT INTO users (user_id, email, name, password_hash)"
            " SELECT g, 'room-' || g || '@bench.flashsale', 'Buyer ' || g, 'unused'"
            " FROM generate_series($1::bigint, $2::bigint) g ON CONFLICT DO NOTHING",
            first, first + count - 1)
        await conn.execute(  # later sign-ups must not meet these ids
            "SELECT setval(pg_get_serial_sequence('users', 'user_id'),"
            " (SELECT max(user_id) FROM users))")
    finally:
        await conn.close()
    signer = TokenSigner(secret=SECRET, ttl_seconds=3600)
    return [{"Authorization": f"Bearer {signer.issue(first + i, 'customer')}"}
            for i in range(count)]


async def throughput(redis, cfg: dict, gw_port: int, bare_port: int) -> list[dict]:
    seconds, conns = cfg["seconds"], cfg["conns"]
    sale_id = 1
    await redis.flushdb()
    await load_sale(redis, sale_id, 10**9, RoomConfig(admission_rate=100))
    # Enough distinct buyers that no join repeats (a join is a new user each time).
    joiners = await tokens(int(seconds * 8000), first=1)
    gw = f"http://127.0.0.1:{gw_port}/api/v1/sales/{sale_id}/queue"
    bare = f"http://127.0.0.1:{bare_port}/bare"
    rows = []
    def token_file(headers: list[dict]) -> str:
        handle, name = tempfile.mkstemp(suffix=".tokens")
        with os.fdopen(handle, "w") as out:
            out.write("\n".join(h["Authorization"].split(" ", 1)[1] for h in headers) + "\n")
        return name

    files = []
    try:
        for method, name in (("POST", "join"), ("GET", "read")):
            # joins: a new buyer each; reads: buyers in line (the first ones to join, less
            # the few requests that may have been in flight)
            count = len(joiners) if name == "join" else max(
                1, int(await redis.zcard(room_keys(sale_id).waiting)) - conns)
            if shutil.which("wrk"):
                files.append(token_file(joiners[:count]))
                base = await asyncio.to_thread(run_wrk, method, bare, "", conns, seconds)
                result = await asyncio.to_thread(run_wrk, method, gw, files[-1], conns,
                                                 seconds)
            else:
                base = await closed_loop(method, lambda n: bare, lambda n: {}, conns, seconds)
                result = await closed_loop(method, lambda n: gw,
                                           lambda n, count=count: joiners[n % count], conns,
                                           seconds)
            rows.append({"operation": name, "bare": base, "room": result,
                         "ratio": result["per_second"] / base["per_second"]})
    finally:
        for name in files:
            os.unlink(name)
    rows[0]["line_length"] = await redis.zcard(room_keys(sale_id).waiting)
    return rows


async def sell_out(redis, cfg: dict, gw_port: int, sale_id: int, aware: bool) -> dict:
    """The scenario of cli/room_scenario.py; paying is confirm.lua straight away."""
    await load_sale(redis, sale_id, cfg["units"],
                    RoomConfig(admission_rate=cfg["rate"], stock_aware=aware))
    admission = Admission(redis, batching=False)

    async def pay(reservation_id: str, user_id: int, headers: dict) -> bool:
        await admission.confirm(reservation_id, user_id=user_id, order_id=user_id)
        return True

    first = sale_id * 1_000_000
    buyers = [(first + i, h) for i, h in enumerate(await tokens(cfg["buyers"], first=first))]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        result = await learn_sold_out(http, f"http://127.0.0.1:{gw_port}", sale_id, buyers,
                                      poll=cfg["poll"], pay=pay)
    return {"room": "stock-aware" if aware else "rate-only", "units": cfg["units"], **result}


async def main_async(mode: str) -> dict:
    cfg = MODES[mode]
    settings = Settings(redis_url=BENCH_REDIS_URL, database_url=BENCH_DATABASE_URL)
    redis = create_redis(settings)
    env = {"FLASHSALE_REDIS_URL": BENCH_REDIS_URL, "FLASHSALE_DATABASE_URL": BENCH_DATABASE_URL,
           "FLASHSALE_SECRET": SECRET, "FLASHSALE_RATE_LIMIT": "0",
           "FLASHSALE_QUEUE_JOIN_RATE": "0"}
    await fresh_database(BENCH_DATABASE_URL)  # the buyers' accounts live there
    bare_port, gw_port = free_port(), free_port()
    bare = Server(["benchmarks.bare_server", "--port", str(bare_port)], {}, bare_port)
    gateway = Server(["cli.main", "serve", "--port", str(gw_port), "--workers", "1"], env,
                     gw_port)
    try:
        await bare.ready("/")
        await gateway.ready("/healthz")
        rows = await throughput(redis, cfg, gw_port, bare_port)
        await redis.flushdb()
        sellouts = [await sell_out(redis, cfg, gw_port, 2, aware=True),
                    await sell_out(redis, cfg, gw_port, 3, aware=False)]
    finally:
        bare.stop()
        gateway.stop()
        await redis.flushdb()
        await redis.aclose()
    return {"config": cfg, "load_generator": "wrk -t1" if shutil.which("wrk") else
            "in-process aiohttp", "throughput": rows, "sell_out": sellouts}


def report(results: dict) -> str:
    cfg = results["config"]
    rows = []
    for r in results["throughput"]:
        for side in ("bare", "room"):
            x = r[side]
            rows.append([r["operation"], "bare aiohttp" if side == "bare" else "gateway",
                         x["per_second"], x["p50_ms"], x["p99_ms"], x["errors"],
                         "1.00x" if side == "bare" else f"{r['ratio']:.2f}x"])
    first = table(f"Waiting room, one sale, 1 worker, {cfg['conns']} connections, "
                  f"{results['load_generator']} "
                  f"({cfg['seconds']:.0f} s each; line length after joins: "
                  f"{results['throughput'][0]['line_length']:,})",
                  ["operation", "server", "req/s", "p50 ms", "p99 ms", "errors", "ratio"], rows)
    second = table(f"Time to learn sold out: {cfg['buyers']:,} buyers, {cfg['units']} units, "
                   f"{cfg['rate']} passes/s, each looks every {cfg['poll']:.0f} s and buys at "
                   "once",
                   ["room", "bought", "passes", "for nothing", "told sold out", "errors",
                    "median knew (s)", "last knew (s)"],
                   [[s["room"], s["bought"], s["passes"], s["passes_for_nothing"],
                     s["told_sold_out"], s["errors"], s["median_knew_s"], s["last_knew_s"]]
                    for s in results["sell_out"]])
    return first + "\n\n" + second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="about a minute (default)")
    group.add_argument("--full", action="store_true", help="a few minutes")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    results = uvloop.run(main_async(mode))
    print(report(results))
    path = write_results("waiting-room", mode, results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    sane = all(s["bought"] == results["config"]["units"] and not s["errors"]
               for s in results["sell_out"])
    return 0 if sane else 1


if __name__ == "__main__":
    sys.exit(main())
