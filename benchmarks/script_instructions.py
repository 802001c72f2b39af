"""Instructions per run of ``reserve.lua`` in Redis, counted by valgrind's callgrind: a
figure that a busy neighbour does not move (``INFO commandstats`` microseconds on this
shared box swing by a third between runs of the same script).

    python -m benchmarks.script_instructions               (batches of 1, 4, 8 and 32)
    python -m benchmarks.script_instructions --batches 4 --calls 500

A private redis-server runs under ``valgrind --tool=callgrind --instr-atstart=no``. For
each script version (today's ``lua/reserve.lua`` and the baselines of
``benchmarks/baseline/`` that share its keys and arguments) and each batch size, the sale
is loaded again and warmed past Redis's listpack sizes (its buyers and reservations hashes
are hash tables in a real sale, so a small one would measure linear scans), then counting
is switched on for ``--calls`` runs of the script, one after another, each admitting
every attempt, and off again. What Redis does for a call is counted: reading and parsing
it, the script, the reply; the kernel's part (the system calls) is not. Needs valgrind;
writes benchmarks/results/script-instructions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import redis.asyncio as aioredis

from benchmarks.common import table, write_results
from benchmarks.gateway import SALE, reset_sale
from cli.stack import free_port
from engine.keys import sale_keys
from engine.scripts import PRELUDE, SCRIPTS

HERE = Path(__file__).resolve().parent
VERSIONS = {"today": None,  # lua/reserve.lua as the engine loads it
            "numbers_before": HERE / "baseline" / "reserve_numbers_before.lua"}
WARM_ATTEMPTS = 2_000  # past hash-max-listpack-entries (128 by default, 512 here)


def _source(version: str) -> str:
    path = VERSIONS[version]
    return SCRIPTS.reserve.source if path is None else PRELUDE + "\n" + path.read_text()


def _totals(out: Path, before: set[Path]) -> int:
    """The instructions of the dump written since ``before`` was listed."""
    for dump in sorted(set(out.glob("*.out*")) - before):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no dump")


class Counted:
    """A redis-server under callgrind, counting only between ``on`` and ``off``."""

    def __init__(self, out: Path) -> None:
        self.out, self.port = out, free_port()
        exe = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}/%p.out", exe, "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], capture_output=True,
                       check=False)

    def on(self) -> set[Path]:
        self._control("-z")
        self._control("-i", "on")
        return set(self.out.glob("*.out*"))

    def off(self, before: set[Path]) -> int:
        self._control("-i", "off")
        self._control("-d")
        return _totals(self.out, before)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


async def _runs(redis: aioredis.Redis, sha: str, batch: int, calls: int, start: int) -> int:
    keys = list(sale_keys(SALE).for_reserve)
    for call in range(calls):
        args: list[str] = [str(SALE), "0", ""]
        for i in range(batch):
            args += ["42", "1", f"k{start + call * batch + i}", "127.0.0.1"]
        answers = await redis.evalsha(sha, len(keys), *keys, *args)
        if any(a[0] != b"ok" for a in answers):
            raise RuntimeError(f"an attempt was not admitted: {answers}")
    return start + calls * batch


async def measure(batches: list[int], calls: int) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="flashsale-callgrind-redis-") as tmp:
        server = Counted(Path(tmp))
        try:
            redis = aioredis.from_url(f"redis://127.0.0.1:{server.port}/0")
            for _ in range(200):  # start-up under valgrind takes a while
                try:
                    await redis.ping()
                    break
                except (ConnectionError, OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.1)
            key = 0
            for batch in batches:
                for version in VERSIONS:
                    await reset_sale(redis)
                    sha = await redis.script_load(_source(version))
                    key = await _runs(redis, sha, 8, WARM_ATTEMPTS // 8, key)
                    before = server.on()
                    key = await _runs(redis, sha, batch, calls, key)
                    counted = server.off(before)
                    rows.append({"version": version, "batch": batch, "calls": calls,
                                 "per_run": counted / calls,
                                 "per_attempt": counted / calls / batch})
            await redis.flushdb()
            await redis.aclose()
        finally:
            server.stop()
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")],
                        default=[1, 4, 8, 32], help="attempts per script run")
    parser.add_argument("--calls", type=int, default=200, help="runs counted per case")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            print(f"skipped: {tool} is not installed (Debian: apt-get install valgrind)")
            return 0
    results = asyncio.run(measure(args.batches, args.calls))
    today = {r["batch"]: r["per_run"] for r in results["rows"] if r["version"] == "today"}
    print(table("reserve.lua in Redis under callgrind: instructions per run (the kernel "
                "not counted; every attempt admitted)",
                ["batch", "version", "k instructions/run", "k/attempt", "today vs it"],
                [[r["batch"], r["version"], r["per_run"] / 1000, r["per_attempt"] / 1000,
                  f"{today[r['batch']] / r['per_run']:.2f}x"]
                 for r in results["rows"]]))
    path = write_results("script", "instructions", results)
    print(f"\nwritten: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
