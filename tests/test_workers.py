"""`flashsale serve --workers 2`: two processes share the port and /metrics sums them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.reconciler_proc import ROOT as ROOT_DIR
from tests.reconciler_proc import free_port

pytestmark = pytest.mark.slow


def _serve_two_workers(settings) -> tuple[subprocess.Popen, str]:
    """`flashsale serve --workers 2` on a free port; the process and its base URL."""
    port = free_port()
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": settings.secret}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", "2"], cwd=ROOT_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


async def _get(url: str) -> tuple[int, str]:
    # A new connection per request, so the kernel spreads them over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url) as resp:
            return resp.status, await resp.text()


async def test_two_workers_share_the_port_and_metrics(settings) -> None:
    proc, base = _serve_two_workers(settings)
    try:
        for _ in range(100):
            try:
                if (await _get(f"{base}/readyz"))[0] == 200:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        for _ in range(40):
            assert (await _get(f"{base}/healthz"))[0] == 200
        counts = []
        for _ in range(6):  # whichever worker answers, it reports the sum of both
            status, text = await _get(f"{base}/metrics")
            assert status == 200
            found = re.search(
                r'flashsale_http_requests_total\{method="GET",route="/healthz",status="200"\}'
                r" (\S+)", text)
            counts.append(float(found.group(1)) if found else 0.0)
        assert set(counts) == {40.0}, counts
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


async def _until(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_a_killed_worker_is_replaced_and_workers_die_with_their_parent(settings) -> None:
    proc, base = _serve_two_workers(settings)
    try:
        await _until(lambda: len(_children(proc.pid)) == 2)
        first = _children(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        await _until(lambda: len(_children(proc.pid)) == 2 and first[0] not in
                     _children(proc.pid))
        replaced = _children(proc.pid)
        for _ in range(100):  # the replacement serves: /metrics counts one restart
            try:
                status, text = await _get(f"{base}/metrics")
            except aiohttp.ClientError:
                status, text = 0, ""
            if status == 200 and re.search(r"flashsale_gateway_worker_restarts_total 1\.0", text):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no worker reports the restart")
        proc.send_signal(signal.SIGKILL)  # the parent dies: its workers follow
        proc.wait(10)
        await _until(lambda: not any(_alive(w) for w in replaced))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
