"""`flashsale loadtest`: buyers provisioned through the API of a running gateway, then a
headless Locust run against the chosen sale, summarised."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from cli.loadtest import provision
from tests.conftest import create_sale
from tests.test_cli_operations import _cli

pytestmark = pytest.mark.slow
LOCUST = shutil.which("locust", path=str(Path(sys.executable).parent))


async def test_buyers_are_provisioned_through_the_api(api, pool) -> None:
    sale = await create_sale(api, quantity=3)
    base = str(api.client.make_url("")).rstrip("/")
    data = await provision(base, sale["sale_id"], 6, parallel=3)
    assert data["sale_id"] == sale["sale_id"] and data["sale"]["remaining"] == 3
    buyers = data["buyers"]
    assert len({b["user_id"] for b in buyers}) == 6
    owned = await pool.fetch(
        "SELECT u.user_id, a.address_id, m.payment_method_id, m.last4 FROM users u"
        " JOIN addresses a USING (user_id) JOIN payment_methods m USING (user_id)"
        " WHERE u.user_id = ANY($1)", [b["user_id"] for b in buyers])
    assert {(r["user_id"], r["address_id"], r["payment_method_id"]) for r in owned} == {
        (b["user_id"], b["address_id"], b["payment_method_id"]) for b in buyers}
    assert {r["last4"] for r in owned} == {"4242"}
    me = await api.call("GET", "/api/v1/me",
                        headers={"Authorization": f"Bearer {buyers[0]['token']}"})
    assert me[0] == 200 and me[1]["user_id"] == buyers[0]["user_id"]


@pytest.mark.skipif(LOCUST is None, reason="Locust not installed (pip install -e '.[bench]')")
async def test_a_headless_run_against_a_running_gateway(settings, api) -> None:
    sale = await create_sale(api, quantity=20, per_user_limit=50)
    base = str(api.client.make_url("")).rstrip("/")
    done = await asyncio.to_thread(
        _cli, settings, "loadtest", "--sale", str(sale["sale_id"]), "--users", "4",
        "--seconds", "3", "--host", base, "--json", FLASHSALE_RATE_LIMIT="0")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    names = {r["name"]: r for r in result["requests"]}
    assert names["/api/v1/sales/{id}/reservations"]["requests"] > 0
    assert result["remaining_before"] == 20 and 0 <= result["remaining_after"] < 20
    _, board = await api.call("GET", f"/api/v1/admin/sales/{sale['sale_id']}",
                              headers=api.admin, expect=200)
    assert board["held"] + board["confirmed"] + board["remaining"] == 20
