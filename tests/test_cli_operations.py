"""An operator's day from the command line alone, and one line for every configuration
mistake."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import assert_error
from tests.reconciler_proc import ROOT

pytestmark = pytest.mark.slow


def _cli(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
                         "FLASHSALE_REDIS_URL": settings.redis_url, **env})


async def _json(settings, *args: str) -> dict:
    done = await asyncio.to_thread(_cli, settings, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


async def test_a_sale_from_creation_to_end_from_the_cli(settings, api) -> None:
    product = await _json(settings, "product", "create", "--name", "Night Lamp", "--price",
                          "30.00", "--stock", "40", "--brand", "Lumen")
    assert product["available_qty"] == 40 and product["price"] == "30.00"
    assert await _json(settings, "product", "show", str(product["product_id"])) == product
    listed = await _json(settings, "product", "list")
    assert listed["items"][0] == product

    ends = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    args = ("sale", "create", "--product-id", str(product["product_id"]), "--quantity", "25",
            "--price", "19.50", "--per-user-limit", "2", "--hold-seconds", "90",
            "--ends-at", ends.isoformat().replace("+00:00", "Z"), "--idempotency-key", "bf-1")
    created = await _json(settings, *args)
    sid = created["sale_id"]
    assert created["status"] == "active" and created["initial"] == created["remaining"] == 25
    assert created["price"] == "19.50" and created["per_user_limit"] == 2
    assert created["hold_seconds"] == 90
    assert created["ends_at"].startswith(ends.strftime("%Y-%m-%dT%H:%M:%S"))
    again = await _json(settings, *args)  # the same key: the same sale, not a second one
    assert again["sale_id"] == sid
    assert (await _json(settings, "product", "show", str(product["product_id"])))[
        "available_qty"] == 15

    status = await _json(settings, "sale", "status", str(sid))
    _, board = await api.call("GET", f"/api/v1/admin/sales/{sid}", headers=api.admin,
                              expect=200)
    # `sale status` is the board plus what the reconciler set aside for the sale.
    assert set(status) == set(board) | {"dead_letters", "conflicts"}
    assert status["sale_id"] == board["sale_id"]
    assert status["dead_letters"] == status["conflicts"] == 0
    for field in ("product_name", "price", "starts_at", "ends_at", "initial", "remaining"):
        assert status[field] == board[field], field
    listed = await _json(settings, "sale", "list", "--status", "active")
    assert [b["sale_id"] for b in listed["items"]] == [sid]

    buyer = await api.signup()
    url = f"/api/v1/sales/{sid}/reservations"
    paused = await _json(settings, "sale", "pause", str(sid))
    assert paused["status"] == "paused"
    status_code, body = await api.call("POST", url, headers=buyer["headers"],
                                       json={"quantity": 1, "idempotency_key": "p"})
    assert status_code == 409
    assert_error(body, "sale_not_active")
    assert (await _json(settings, "sale", "list", "--status", "paused"))["items"][0][
        "sale_id"] == sid
    refused = await asyncio.to_thread(_cli, settings, "sale", "pause", str(sid), "--json")
    assert refused.returncode == 1 and refused.stdout == ""
    assert json.loads(refused.stderr)["error"]["code"] == "invalid_transition"

    assert (await _json(settings, "sale", "resume", str(sid)))["status"] == "active"
    await api.call("POST", url, headers=buyer["headers"],
                   json={"quantity": 1, "idempotency_key": "r"}, expect=201)
    ended = await _json(settings, "sale", "end", str(sid))
    assert ended["status"] == "ended" and ended["held"] == 1 and ended["remaining"] == 24
    status_code, body = await api.call("POST", url, headers=buyer["headers"],
                                       json={"quantity": 1, "idempotency_key": "e"})
    assert status_code == 409
    assert_error(body, "sale_not_active")


async def test_create_refuses_free_past_and_zoneless(settings, product_factory) -> None:
    product = str(await product_factory(stock=5))
    base = ("sale", "create", "--product-id", product, "--quantity", "1")
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    for extra, words in ((("--price", "0"), "--allow-free"),
                         (("--price", "1.00", "--starts-at", past), "in the past"),
                         (("--price", "1.00", "--starts-at", "2030-01-01 10:00"),
                          "no time zone")):
        done = await asyncio.to_thread(_cli, settings, *base, *extra)
        assert done.returncode != 0 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    free = await _json(settings, *base, "--price", "0", "--allow-free")
    assert free["price"] == "0.00"


def _taken_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


@pytest.mark.parametrize("case", ["gateway port taken", "metrics port taken", "unknown role",
                                  "unknown database", "mysql url", "bad redis db",
                                  "unreachable postgres"])
def test_configuration_mistakes_are_one_line(settings, case: str) -> None:
    holder = _taken_port()
    port = str(holder.getsockname()[1])
    db = settings.database_url.rsplit("/", 1)[0]
    runs = {
        "gateway port taken": (("serve", "--port", port), {}),
        "metrics port taken": (("reconcile", "--metrics-port", port), {}),
        "unknown role": (("serve", "--port", "0"), {
            "FLASHSALE_DATABASE_URL": settings.database_url.replace(
                "postgres@", "no_such_role_h15@")}),
        "unknown database": (("audit",), {"FLASHSALE_DATABASE_URL": db + "/no_such_db_h15"}),
        "mysql url": (("sale", "list"), {"FLASHSALE_DATABASE_URL": "mysql://root@db/shop"}),
        "bad redis db": (("reconcile", "--metrics-port", "0"), {
            "FLASHSALE_REDIS_URL": settings.redis_url.rsplit("/", 1)[0] + "/999"}),
        "unreachable postgres": (("sale", "list"), {
            "FLASHSALE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x"}),
    }
    args, env = runs[case]
    try:
        done = _cli(settings, *args, **env)
    finally:
        holder.close()
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0, lines
    assert 1 <= len(lines) <= 3 and "Traceback" not in done.stderr, lines
    assert "listening" not in done.stdout + done.stderr


async def test_a_missing_database_at_run_time_is_a_503(settings, caplog) -> None:
    from aiohttp.test_utils import TestClient

    from gateway.app import create_app
    from tests.conftest import GatewayServer, make_settings

    gone = settings.database_url.rsplit("/", 1)[0] + "/dropped_under_us_h15"
    client = TestClient(GatewayServer(create_app(make_settings(database_url=gone))))
    await client.start_server()
    try:
        for path in ("/api/v1/products/1", "/api/v1/products", "/readyz"):
            resp = await client.get(path)
            body = await resp.json()
            assert resp.status == 503 and resp.headers["Retry-After"] == "1", path
            assert body["error"]["code"] == "unavailable", body
    finally:
        await client.close()
    assert "Traceback" not in caplog.text and "unhandled error" not in caplog.text
