"""Schemathesis over the served OpenAPI document, against a real `flashsale serve`: with a
user's token and with the operator token, no generated request may get a server error,
an undocumented status code, a response that breaks its schema or a wrong content type.

Half the generated ids are a seeded product's and sale's, and the stateful phase follows
the document's links from what its calls make (``_config``). Bounded for `make test` (a
few examples per operation, one worker, a fixed seed); the run's case count is printed
(`pytest -s`) and checked to be non-trivial."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, SECRET
from tests.reconciler_proc import wait_answering

ROOT = Path(__file__).resolve().parent.parent
ST = Path(sys.executable).parent / "st"
CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,"
          "content_type_conformance")
EXAMPLES = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _seed(base: str) -> tuple[str, dict[str, int]]:
    """A user (whose token the run uses), a product and a sale, so some ids exist: the
    token and the ids by parameter name."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/api/v1/auth/signup", json={
                "email": "fuzz@example.com", "password": "correct-horse-1",
                "name": "Fuzz"}) as resp:
            token = (await resp.json())["token"]
        async with http.post(f"{base}/api/v1/seller/products", headers=admin, json={
                "name": "Fuzzed lamp", "price": "9.99", "available_qty": 100_000}) as resp:
            product = await resp.json()
        async with http.post(f"{base}/api/v1/admin/sales", headers=admin, json={
                "product_id": product["product_id"], "quantity": 100_000, "price": "4.99",
                # Room for many holds, so the run goes on from one to what it links to.
                "per_user_limit": 1000}) as resp:
            assert resp.status == 201, await resp.text()
            sale = await resp.json()
    return token, {"product_id": product["product_id"], "sale_id": sale["sale_id"]}


def _config(path: Path, ids: dict[str, int]) -> Path:
    """A schemathesis config that sends the seeded ids half the time, in paths and
    bodies: generated ids alone almost never name anything (404), so the reservation,
    its order and the product's reviews would go unreached; from what those answers
    make, the stateful phase follows the document's links."""
    lines = []
    for name, value in ids.items():
        lines += [f"[dictionaries.{name}]", f'values = ["{value}"]', ""]
    lines.append("[parameters]")
    for name in ids:
        for where in ("path", "body"):
            lines.append(f'"{where}.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
    path.write_text("\n".join(lines) + "\n")
    return path


async def _schemathesis(base: str, token: str, config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ST), "--config-file", str(config), "run", f"{base}/api/v1/openapi.json",
        "--checks", CHECKS,
        "--header", f"Authorization: Bearer {token}", "--max-examples", str(EXAMPLES),
        "--seed", "11", "--workers", "1", "--no-color",
        "--phases", "examples,coverage,fuzzing,stateful",
        # It would revoke the token the rest of the run uses.
        "--exclude-path", "/api/v1/auth/logout-all",
        "--generation-database", "none",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(420)
async def test_schemathesis_finds_nothing(settings, database, tmp_path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLASHSALE_ENV": "development",
           "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": SECRET,
           "FLASHSALE_ADMIN_TOKEN": ADMIN_TOKEN, "FLASHSALE_RATE_LIMIT": "0",
           "FLASHSALE_SIGNUPS_PER_HOUR": "0", "FLASHSALE_PASSWORD_COST": "10"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        await wait_answering(base, proc, "/readyz")
        user_token, ids = await _seed(base)
        config = _config(tmp_path / "schemathesis.toml", ids)
        total = 0
        for who, token in (("user", user_token), ("operator", ADMIN_TOKEN)):
            code, out = await _schemathesis(base, token, config)
            tail = out[-6000:]
            assert code == 0, f"schemathesis with the {who} token:\n{tail}"
            cases = re.search(r"(\d+) generated, (\d+) passed", out)
            assert cases and cases.group(1) == cases.group(2), tail
            total += int(cases.group(1))
            print(f"schemathesis ({who} token): {cases.group(1)} cases, 0 failures")
        assert total > 1000  # the run really generated something
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err, err.decode(errors="replace")[-4000:]
