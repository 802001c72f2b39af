"""Monitoring that works: the alert rules pass promtool, every alert links to a runbook
section that exists, and a real Prometheus scraping a running gateway and reconciler
evaluates every dashboard query and every rule without error.

Needs the Debian `prometheus` package (prometheus, promtool); skips with the reason when
it is missing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, SECRET
from tests.reconciler_proc import ROOT, ReconcilerProcess, free_port

ALERTS = ROOT / "deploy" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "flashsale.json"
REQUIRED = {"FlashsaleReconcilerDown", "FlashsaleReconcilerLagHigh", "FlashsaleDependencyDown",
            "FlashsaleReconcilerPostgresErrors", "FlashsaleHigh5xxRate",
            "FlashsaleBooksMismatch", "FlashsaleDeadLetters", "FlashsaleOutboxBacklog"}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    rules = _rules()
    assert REQUIRED <= {r["alert"] for r in rules}
    sections = {_anchor(h) for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    for rule in rules:
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor in sections, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
    prometheus_yml = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prometheus_yml["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "alertmanager" in compose["services"]
    for name, service in compose["services"].items():  # pinned: no floating tags
        image = service.get("image", "")
        assert not image.endswith(":latest") and (":" in image), (name, image)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package `prometheus`)")
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def _dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if "expr" in t]
    for variable in board["templating"]["list"]:  # label_values(metric, label) -> metric
        found = re.match(r"label_values\((\w+),", variable["definition"])
        assert found, variable["definition"]
        queries.append(found.group(1))
    # Grafana's variables, as Grafana would substitute them.
    return [q.replace("$__rate_interval", "1m").replace("$sale_id", ".*") for q in queries]


async def _get(http: aiohttp.ClientSession, url: str, **params) -> dict:
    async with http.get(url, params=params) as resp:
        return await resp.json()


async def _until(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus not installed (Debian package `prometheus`)")
async def test_a_real_prometheus_evaluates_every_dashboard_query_and_rule(
        settings, tmp_path: Path, api) -> None:
    gateway_port, reconciler_port, prom_port = free_port(), free_port(), free_port()
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_ADMIN_TOKEN": ADMIN_TOKEN,
           "FLASHSALE_SECRET": SECRET, "FLASHSALE_RATE_LIMIT": "0"}
    gateway_log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(gateway_port)], cwd=ROOT,
        env=env, stdout=gateway_log, stderr=subprocess.STDOUT)
    reconciler = ReconcilerProcess(settings, "prom", metrics_port=reconciler_port).start()
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "900ms"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [
                {"targets": [f"127.0.0.1:{gateway_port}"]}]},
            {"job_name": "reconciler", "static_configs": [
                {"targets": [f"127.0.0.1:{reconciler_port}"]}]}]}))
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        # Some traffic, so rates and per-sale series exist.
        from tests.conftest import create_sale
        sale = await create_sale(api, quantity=5)
        async with aiohttp.ClientSession() as http:
            gw = f"http://127.0.0.1:{gateway_port}"

            async def gateway_ready():
                try:
                    async with http.get(f"{gw}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await _until(gateway_ready, "the gateway")
            for _ in range(3):
                async with http.get(f"{gw}/api/v1/sales/{sale['sale_id']}") as resp:
                    assert resp.status == 200

            async def both_up():
                try:
                    got = await _get(http, f"{base}/query", query="up")
                except aiohttp.ClientConnectionError:
                    return False
                ups = {r["metric"]["job"]: r["value"][1] for r in got["data"]["result"]}
                return ups == {"gateway": "1", "reconciler": "1"}

            await _until(both_up, "Prometheus to scrape both processes")

            async def per_sale_series():
                got = await _get(http, f"{base}/query",
                                 query="flashsale_sale_books_mismatch_units")
                return got["data"]["result"]

            mismatch = await _until(per_sale_series, "the books gauge in Prometheus")
            assert {r["metric"]["sale_id"]: r["value"][1] for r in mismatch} == {
                str(sale["sale_id"]): "0"}
            gateway_series = await _get(http, f"{base}/query",
                                        query='{job="gateway", __name__=~"flashsale_.*"}')
            names = {r["metric"]["__name__"] for r in gateway_series["data"]["result"]}
            assert names and not [n for n in names if n.startswith("flashsale_reconciler_")]
            assert not [n for n in names if n.endswith("_created")]

            for query in _dashboard_queries():
                got = await _get(http, f"{base}/query", query=query)
                assert got["status"] == "success", (query, got)

            async def rules_evaluated():
                got = await _get(http, f"{base}/rules")
                rules = [r for g in got["data"]["groups"] for r in g["rules"]]
                done = [r for r in rules if r["lastEvaluation"] > "2000"]
                return rules if len(done) == len(rules) == len(_rules()) else None

            rules = await _until(rules_evaluated, "every rule to be evaluated")
            assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
            # (`absent(up)` may be pending from before the first scrape; never firing.)
            firing = {r["name"] for r in rules if r["state"] == "firing"}
            assert not firing & {"FlashsaleReconcilerDown", "FlashsaleGatewayDown",
                                 "FlashsaleBooksMismatch", "FlashsaleDependencyDown"}
    finally:
        prometheus.terminate()
        gateway.terminate()
        reconciler.stop()
        for proc in (prometheus, gateway):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        gateway_log.close()
        prom_log.close()
