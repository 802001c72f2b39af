"""Run the real reconciler as a subprocess for tests, and wait for it to drain."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from engine.settings import Settings
from reconciler.lag import stream_lag

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReconcilerProcess:
    def __init__(self, settings: Settings, name: str, *, database_url: str | None = None,
                 metrics_port: int = 0, **env: str) -> None:
        self.name = name
        self.metrics_port = metrics_port
        self.env = {**os.environ,
                    "FLASHSALE_DATABASE_URL": database_url or settings.database_url,
                    "FLASHSALE_REDIS_URL": settings.redis_url,
                    "FLASHSALE_CLAIM_IDLE_MS": "500", "FLASHSALE_SWEEP_INTERVAL": "0.2",
                    "FLASHSALE_RECONCILE_BLOCK_MS": "100", **env}
        self.proc: subprocess.Popen | None = None
        self.log = ROOT / ".var" / f"test-reconciler-{name}.log"

    def start(self) -> ReconcilerProcess:
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "reconcile", "--consumer", self.name,
                 "--metrics-port", str(self.metrics_port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    async def ready(self, timeout: float = 15.0) -> ReconcilerProcess:
        """Until the process logs that it runs (its signal handlers are installed)."""
        deadline = time.monotonic() + timeout
        marker = f"reconciler {self.name} started".encode()
        while marker not in self.log.read_bytes():
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            if time.monotonic() > deadline:
                raise AssertionError(f"reconciler {self.name} did not start")
            await asyncio.sleep(0.05)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def wait_answering(base: str, proc: subprocess.Popen, path: str = "/healthz",
                         timeout: float = 30.0) -> None:
    """Until the server process at ``base`` answers ``path`` with 200 (it must not exit
    meanwhile)."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.poll() is None, f"the server at {base} exited"
            try:
                async with http.get(f"{base}{path}") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"{base}{path} did not answer 200"
            await asyncio.sleep(0.05)


async def wait_drained(redis, pool, sale_id: int, *, rows: int | None = None,
                       timeout: float = 30.0) -> None:
    """Until the sale's stream is fully applied (and, if given, ``rows`` rows exist)."""
    deadline = time.monotonic() + timeout
    while True:
        lag = await stream_lag(redis, sale_id)
        count = await pool.fetchval(
            "SELECT count(*) FROM sale_reservations WHERE sale_id = $1", sale_id)
        if lag.pending == 0 and (rows is None or count == rows):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained: lag {lag}, rows {count}, want {rows}")
        await asyncio.sleep(0.1)


async def new_sale(sales, product_factory, quantity: int, **kw) -> int:
    """A sale of ``quantity`` units at 5.00 on a new product that holds just those units."""
    product = await product_factory(stock=quantity)
    return (await sales.create(product_id=product, quantity=quantity, price=Decimal("5.00"),
                               **kw))["sale_id"]
