"""One flashsale stack of real processes for a chaos scenario: a private Redis, a Postgres
database, the reconciler and a supervised two-worker gateway, each killable; and buyers
that record every acknowledged reservation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from chaos.servers import ROOT, VAR, PrivateRedis, free_port

SECRET = "chaos-secret-0123456789abcdef0123456789abcdef"


class Process:
    """A flashsale command run as a child process, its output in .var/chaos/."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name, self.args, self.env = name, args, env
        self.log = VAR / f"{name}-{os.getpid()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, **extra_env: str) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", *self.args],
                                         cwd=ROOT, env={**self.env, **extra_env},
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def children(self) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{self.pid}/task/{self.pid}/children")
                    .read_text().split()]
        except (FileNotFoundError, AssertionError):
            return []


@dataclass
class Ledger:
    """Every reservation a buyer was told it has (201 or an idempotent 200 replay)."""
    acked: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))
    ack_times: list[float] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, reservation_id: str, user: int, key: str) -> None:
        self.acked[reservation_id].add((user, key))
        self.ack_times.append(time.monotonic())

    @property
    def reused(self) -> list[str]:
        """Ids acknowledged for two different requests (users or idempotency keys)."""
        return [rid for rid, owners in self.acked.items() if len(owners) > 1]


class Stack:
    def __init__(self, name: str, *, database_url: str, appendfsync: str | None) -> None:
        self.name = name
        self.redis = PrivateRedis(name, appendfsync=appendfsync)
        self.database_url = database_url
        self.port = free_port()
        self.env = {**os.environ, "FLASHSALE_REDIS_URL": self.redis.url,
                    "FLASHSALE_DATABASE_URL": database_url, "FLASHSALE_SECRET": SECRET,
                    "FLASHSALE_RATE_LIMIT": "0", "FLASHSALE_CLAIM_IDLE_MS": "500",
                    "FLASHSALE_SWEEP_INTERVAL": "0.2", "FLASHSALE_RECONCILE_BLOCK_MS": "100",
                    "FLASHSALE_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.reconciler = Process(f"{name}-reconciler",
                                  ["reconcile", "--consumer", name, "--metrics-port", "0"],
                                  self.env)
        self.gateway = Process(f"{name}-gateway", ["serve", "--workers", "2"], self.env)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Stack:
        self.redis.start()
        self.reconciler.start()
        self.gateway.start()
        await self.gateway_ready()
        return self

    async def gateway_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway of {self.name} did not start; see "
                                       f"{self.gateway.log}")
                await asyncio.sleep(0.1)

    def close(self) -> None:
        for proc in (self.gateway, self.reconciler):
            proc.stop()
        self.redis.remove()


class Buyers:
    """``count`` concurrent buyers reserving one unit at a time through the gateway. A buyer
    that gets no answer (connection reset, 503) asks again with the same idempotency key,
    as the API contract tells clients to, so an admission whose answer was lost is
    acknowledged later under the same id."""

    def __init__(self, stack: Stack, sale_id: int, tokens: dict[int, str], *,
                 count: int, pace: float) -> None:
        self.stack, self.sale_id, self.tokens, self.count = stack, sale_id, tokens, count
        self.pace = pace  # seconds a buyer waits after each hold: spare the shared box
        self.ledger = Ledger()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> Buyers:
        users = sorted(self.tokens)
        self._tasks = [asyncio.create_task(self._buyer(users[i % len(users)], i))
                       for i in range(self.count)]
        return self

    async def stop(self) -> Ledger:
        self.stopping.set()
        await asyncio.gather(*self._tasks)
        return self.ledger

    async def _buyer(self, user: int, lane: int) -> None:
        url = f"{self.stack.base}/api/v1/sales/{self.sale_id}/reservations"
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        timeout = aiohttp.ClientTimeout(total=5)
        n = 0
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self.stopping.is_set():
                key = f"b{lane}-{n}"
                while not self.stopping.is_set():  # the same key until it is answered
                    try:
                        async with http.post(url, headers=headers, json={
                                "quantity": 1, "idempotency_key": key}) as resp:
                            body = await resp.json(content_type=None)
                            status = resp.status
                    except (TimeoutError, aiohttp.ClientError, ValueError):
                        status, body = 0, None
                    self.ledger.answers[status] += 1
                    if status in (200, 201):
                        self.ledger.record(body["reservation_id"], user, key)
                        await asyncio.sleep(self.pace)
                        break
                    if status == 409:  # sold out or not active (a repair): stop this key
                        await asyncio.sleep(0.05)
                        break
                    await asyncio.sleep(0.05)  # 503, 0: retry the same request
                n += 1
