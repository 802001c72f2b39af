"""Instructions per request of the bare aiohttp server and the gateway's reservation
endpoint, counted by valgrind's callgrind: a figure that a busy neighbour does not move
(wall-clock rates and CPU seconds on this shared box swing by a third between runs).

    python -m benchmarks.gateway_instructions             (8 and 64 connections, ~3 min)
    python -m benchmarks.gateway_instructions --conns 64 --seconds 10 --only reserve

Each server runs in one process under ``valgrind --tool=callgrind --instr-atstart=no``;
after a warm-up, counting is switched on (``callgrind_control -i on``) for the measured
wrk run only, then the process exits and its total is read. Python's own work (the
interpreter, aiohttp's C parts, uvloop, msgspec, hiredis) is counted; the kernel's (the
system calls, the same number per request for both servers) is not. The servers are
about 50 times slower under valgrind, so batches and loop turns are not those of a real
run: compare the two servers at the same connections, not against a wall-clock figure.
Needs valgrind and wrk; writes benchmarks/results/gateway-instructions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from accounts.tokens import TokenSigner
from benchmarks.common import BENCH_DATABASE_URL, private_redis, table, write_results
from benchmarks.gateway import (
    SALE,
    SECRET,
    SOLD_OUT_SALE,
    Server,
    bench_buyer,
    reset_sale,
    run_wrk,
)
from cli.stack import free_port
from engine.connections import create_redis
from engine.settings import Settings

CASES = {"bare": "/bare", "reserve": f"/api/v1/sales/{SALE}/reservations",
         "sold_out": f"/api/v1/sales/{SOLD_OUT_SALE}/reservations"}


def _command(case: str, port: int, out: Path) -> list[str]:
    python = (["-c", f"from benchmarks.bare_server import serve; serve({port})"]
              if case == "bare" else
              ["-m", "cli.main", "serve", "--port", str(port), "--workers", "1"])
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}/%p.out", sys.executable, *python]


def _counted(out: Path) -> int:
    """The instructions of the counted span: the ``totals:`` line of each dump."""
    total = 0
    for dump in out.glob("*.out*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


async def one(case: str, conns: int, seconds: int, env: dict[str, str], token: str) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="flashsale-callgrind-") as tmp:
        out = Path(tmp)
        server = Server.__new__(Server)
        server.port = port
        server.proc = subprocess.Popen(_command(case, port, out), env={**os.environ, **env},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(20):  # start-up under valgrind takes a while
                try:
                    await server.ready("/" if case == "bare" else "/healthz")
                    break
                except RuntimeError:
                    continue
            url = f"http://127.0.0.1:{port}{CASES[case]}"
            bearer = "" if case == "bare" else token
            await asyncio.to_thread(run_wrk, url, CASES[case], bearer, conns, 3)  # warm-up
            control = ["callgrind_control", "-i"]
            subprocess.run([*control, "on", str(server.proc.pid)], capture_output=True)
            run = await asyncio.to_thread(run_wrk, url, CASES[case], bearer, conns, seconds)
            subprocess.run([*control, "off", str(server.proc.pid)], capture_output=True)
        finally:
            server.proc.terminate()  # the dump is written as the process exits
            server.proc.wait(180)
        counted = _counted(out)
    return {"case": case, "connections": conns, "requests": run["requests"],
            "non_2xx": run["non_2xx"], "instructions": counted,
            "per_request": counted / max(run["requests"], 1)}


async def main_async(conns: list[int], seconds: int, only: list[str]) -> dict:
    with private_redis() as redis_url:
        if redis_url is None:
            raise SystemExit("needs redis-server for a private Redis")
        redis = create_redis(Settings(redis_url=redis_url, database_url=BENCH_DATABASE_URL))
        token = TokenSigner(secret=SECRET, ttl_seconds=3600).issue(
            await bench_buyer(BENCH_DATABASE_URL), "customer")
        env = {"FLASHSALE_REDIS_URL": redis_url, "FLASHSALE_DATABASE_URL": BENCH_DATABASE_URL,
               "FLASHSALE_SECRET": SECRET, "FLASHSALE_RATE_LIMIT": "0"}
        rows = []
        try:
            for n in conns:
                for case in only:
                    await reset_sale(redis)
                    rows.append(await one(case, n, seconds, env, token))
        finally:
            await redis.flushdb()
            await redis.aclose()
    return {"seconds": seconds, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=lambda v: [int(c) for c in v.split(",")],
                        default=[8, 64])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--only", type=lambda v: v.split(","), default=list(CASES))
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            print(f"skipped: {tool} is not installed (Debian: apt-get install valgrind wrk)")
            return 0
    results = uvloop.run(main_async(args.conns, args.seconds, args.only))
    bare = {r["connections"]: r["per_request"] for r in results["rows"] if r["case"] == "bare"}
    print(table("Instructions per request under callgrind (1 process; the kernel not counted)",
                ["conns", "endpoint", "requests", "k instructions/req", "vs bare"],
                [[r["connections"], r["case"], r["requests"], r["per_request"] / 1000,
                  f"{r['per_request'] / bare[r['connections']]:.2f}x"
                  if r["connections"] in bare else "-"] for r in results["rows"]]))
    path = write_results("gateway", "instructions", results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
