"""Start and stop a local gateway and reconciler as child processes (the demo, the
benchmarks and the swarm use this), and wait until they answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", *self.args],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)


@dataclass
class Stack:
    """A gateway (``workers`` processes) and a reconciler on free ports."""
    env: dict[str, str]
    log_dir: Path
    workers: int = 1
    reconciler: bool = True
    gateway_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    children: list[Child] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        # A local stack (demo, benchmarks) may run on the development secret.
        env = {"FLASHSALE_ENV": "development", **os.environ, **self.env}
        gateway = Child("gateway", ["serve", "--host", "127.0.0.1", "--port",
                                    str(self.gateway_port), "--workers", str(self.workers)],
                        env, self.log_dir / "gateway.log", f"{self.base_url}/readyz")
        self.children = [gateway]
        if self.reconciler:
            self.children.append(Child(
                "reconciler", ["reconcile", "--metrics-port", str(self.metrics_port)], env,
                self.log_dir / "reconciler.log",
                f"http://127.0.0.1:{self.metrics_port}/readyz"))
        for child in self.children:
            child.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            for child in self.children:
                while True:
                    if child.proc is not None and child.proc.poll() is not None:
                        raise RuntimeError(f"{child.name} exited; see {child.log_path}")
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.get(child.ready_url) as resp:
                            if resp.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{child.name} not ready after {timeout:.0f} s; "
                                           f"see {child.log_path}")
                    await asyncio.sleep(0.1)

    def stop(self) -> dict[str, int | None]:
        return {child.name: child.stop() for child in reversed(self.children)}


async def make_buyers(config, count: int) -> list[tuple[int, str]]:
    """Buyer accounts made in bulk (one password hash for all: they never log in), with
    bearer tokens signed by the gateway's secret."""
    import secrets

    import asyncpg

    from accounts.passwords import hash_password
    from accounts.tokens import TokenSigner

    run_tag = secrets.token_hex(4)
    password_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(18))
    conn = await asyncpg.connect(config.database_url)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (email, name, password_hash)"
            " SELECT 'buyer-' || $1 || '-' || g || '@demo.flashsale', 'Demo buyer ' || g, $2"
            " FROM generate_series(1, $3) g RETURNING user_id", run_tag, password_hash, count)
    finally:
        await conn.close()
    signer = TokenSigner(secret=config.secret, ttl_seconds=3600)
    return [(r["user_id"], signer.issue(r["user_id"], "customer")) for r in rows]
