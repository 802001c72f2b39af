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


async def _get(url: str) -> tuple[int, str]:
    # A new connection per request, so the kernel spreads them over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url) as resp:
            return resp.status, await resp.text()


async def test_two_workers_share_the_port_and_metrics(settings) -> None:
    port = free_port()
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": settings.secret}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", "2"], cwd=ROOT_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
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
