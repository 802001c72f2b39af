"""What every benchmark shares: where it runs, percentiles, the table it prints, the JSON it
writes. Benchmarks use their own Redis db and database, never the demo's or the tests'."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_REDIS_URL = os.environ.get("FLASHSALE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
BENCH_DATABASE_URL = os.environ.get(
    "FLASHSALE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_bench")


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p99/p999/mean in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "p999_ms": round(percentile(ms, 99.9), 3),
            "mean_ms": round(statistics.fmean(ms), 3) if ms else 0.0}


def table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if _numeric(v) else v.ljust(w)
                         for v, w in zip(values, widths, strict=True))
    out = [title, line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("x", "").replace("-", "").isdigit()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "redis": version(["redis-server", "--version"]).split(" ")[2:3],
            "postgres": version(["psql", "--version"])}


async def fresh_database(url: str) -> None:
    """Drop the benchmark's database and create it again, fully migrated."""
    import asyncpg

    from engine.connections import database_name, with_database
    from engine.migrate import migrate

    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    finally:
        await admin.close()
    await migrate(url)


def write_results(name: str, mode: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{mode}.json"
    payload = {"benchmark": name, "mode": mode, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
               "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


@contextlib.contextmanager
def private_redis(*extra: str, unix: bool = False) -> Iterator[str | None]:
    """A throwaway redis-server on a free port (no persistence unless ``extra`` asks),
    for measurements that read server-wide figures (INFO commandstats, INFO cpu): on the
    shared server other clients' commands would be counted too. ``unix``: on a Unix
    socket only (a unix:// URL). Yields its URL, or None when no redis-server is found."""
    exe = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)),
        None)
    if exe is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="flashsale-bench-redis-") as tmp:
        path = os.path.join(tmp, "redis.sock")
        where = ["--port", "0", "--unixsocket", path] if unix else [
            "--port", str(port), "--bind", "127.0.0.1"]
        proc = subprocess.Popen(
            [exe, *where, "--dir", tmp, "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.socket(
                        socket.AF_UNIX if unix else socket.AF_INET) as probe:
                    probe.settimeout(0.2)
                    probe.connect(path if unix else ("127.0.0.1", port))
                    break
                time.sleep(0.05)
            yield f"unix://{path}?db=0" if unix else f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
