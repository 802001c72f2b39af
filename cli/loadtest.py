"""flashsale loadtest: a Locust swarm of flash buyers aimed at a running gateway and a
chosen sale.

Buyers are provisioned through the public API (signup, an address and a test card each),
so any gateway will do, local or not. Each buyer reserves one unit, pays for it and
watches the sale (benchmarks/locustfile.py's FlashBuyer). Headless by default, ending
with a summary per request type; ``--ui`` serves Locust's web UI instead.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from cli.common import CommandError, emit, json_option, run, settings

LOCUSTFILE = Path(__file__).resolve().parent.parent / "benchmarks" / "locustfile.py"
TEST_CARD = "4242424242424242"  # the simulated provider's card that always succeeds


async def _call(http, method: str, url: str, *, attempts: int = 20, **kw) -> dict:
    """One API call; waits out 429/503 (Retry-After) a few times, fails in one line."""
    for _ in range(attempts):
        async with http.request(method, url, **kw) as resp:
            if resp.status in (429, 503):
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                error = (body or {}).get("error", {})
                raise CommandError(f"{method} {url} answered {resp.status} "
                                   f"{error.get('code')}: {error.get('message')}",
                                   code=error.get("code", "error"))
            return body
    raise CommandError(f"{method} {url} kept answering 429/503; is the gateway overloaded?",
                       code="unavailable")


async def provision(base: str, sale_id: int, users: int, *, parallel: int = 8) -> dict:
    """The swarm's data file: the sale and ``users`` buyers, each with a token, an address
    and a card, made through the API."""
    import aiohttp

    run_tag = secrets.token_hex(4)
    password = secrets.token_urlsafe(18) + "Aa1!"
    gate = asyncio.Semaphore(parallel)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            sale = await _call(http, "GET", f"{base}/api/v1/sales/{sale_id}")
        except aiohttp.ClientConnectionError as exc:
            raise CommandError(f"cannot reach the gateway at {base}: {exc}",
                               code="unavailable") from exc

        async def buyer(n: int) -> dict:
            async with gate:
                made = await _call(http, "POST", f"{base}/api/v1/auth/signup", json={
                    "email": f"loadtest-{run_tag}-{n}@loadtest.flashsale.test",
                    "password": password, "name": f"Load test buyer {n}"})
                auth = {"Authorization": f"Bearer {made['token']}"}
                address = await _call(http, "POST", f"{base}/api/v1/me/addresses",
                                      headers=auth, json={
                                          "line1": f"{n} Load Street", "city": "Springfield",
                                          "postal_code": "12345", "country": "US"})
                card = await _call(http, "POST", f"{base}/api/v1/me/payment-methods",
                                   headers=auth, json={
                                       "type": "card", "card_number": TEST_CARD,
                                       "exp_month": 12, "exp_year": 2099, "cvc": "123"})
                return {"user_id": made["user_id"], "token": made["token"],
                        "address_id": address["address_id"],
                        "payment_method_id": card["payment_method_id"]}

        buyers = await asyncio.gather(*(buyer(n) for n in range(users)))
    return {"sale_id": sale_id, "sale": sale, "buyers": buyers,
            "product_ids": [sale["product_id"]], "category_ids": [], "terms": []}


def _summary(stats_csv: Path) -> list[dict]:
    rows = []
    with stats_csv.open() as f:
        for row in csv.DictReader(f):
            rows.append({"type": row["Type"], "name": row["Name"],
                         "requests": int(row["Request Count"]),
                         "failures": int(row["Failure Count"]),
                         "requests_per_s": round(float(row["Requests/s"]), 1),
                         "p50_ms": float(row["50%"] or 0), "p99_ms": float(row["99%"] or 0)})
    return rows


@click.command()
@click.option("--sale", "sale_id", type=click.IntRange(1), required=True,
              help="The sale to hammer.")
@click.option("--users", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Simulated buyers (each provisioned through the API).")
@click.option("--seconds", type=click.IntRange(1), default=30, show_default=True,
              help="How long the headless run lasts.")
@click.option("--host", default=None,
              help="Gateway base URL (default http://FLASHSALE_HOST:FLASHSALE_PORT).")
@click.option("--ui", is_flag=True, help="Serve Locust's web UI instead of a headless run.")
@click.option("--ui-port", type=click.IntRange(1, 65535), default=8089, show_default=True)
@json_option
def loadtest(sale_id: int, users: int, seconds: int, host: str | None, ui: bool,
             ui_port: int, as_json: bool) -> None:
    """Locust aimed at a running gateway and a chosen sale."""
    config = settings()
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which(
        "locust")
    if locust is None:
        raise CommandError("Locust is not installed: pip install -e '.[bench]' (or "
                           "`make swarm` once).", code="misconfigured")
    if not LOCUSTFILE.exists():
        raise CommandError(f"{LOCUSTFILE} is missing: run loadtest from a checkout of the "
                           "repository.", code="misconfigured")
    base = (host or f"http://{config.host}:{config.port}").rstrip("/")
    if config.rate_limit:
        click.echo(f"warning: FLASHSALE_RATE_LIMIT is {config.rate_limit}/s per user and per "
                   "client address; every simulated buyer shares this machine's address, so "
                   "a gateway run with that setting answers most reservations 429. Run it "
                   "with FLASHSALE_RATE_LIMIT=0 for a load test.", err=True)
    data = run(provision(base, sale_id, users))
    work = Path(tempfile.mkdtemp(prefix="flashsale-loadtest-"))
    data_file = work / "swarm.json"
    data_file.write_text(json.dumps(data))
    env = {**os.environ, "FLASHSALE_SWARM_FILE": str(data_file)}
    args = [locust, "-f", str(LOCUSTFILE), "FlashBuyer", "--host", base,
            "--users", str(users), "--spawn-rate", str(max(1, users // 5))]
    if ui:
        click.echo(f"{users} buyers ready for sale {sale_id}; Locust's web UI: "
                   f"http://127.0.0.1:{ui_port} (Ctrl-C to stop)", err=True)
        code = subprocess.call([*args, "--web-host", "127.0.0.1", "--web-port", str(ui_port)],
                               env=env)
        raise SystemExit(code)
    prefix = work / "run"
    done = subprocess.run([*args, "--headless", "--run-time", f"{seconds}s", "--csv",
                           str(prefix), "--only-summary", "--loglevel", "WARNING"],
                          env=env, capture_output=True, text=True)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CommandError(f"Locust did not finish: {tail[0]}", code="error")
    rows = _summary(stats)
    after = run(sale_now(base, sale_id))
    result = {"sale_id": sale_id, "users": users, "seconds": seconds, "host": base,
              "requests": rows, "remaining_before": data["sale"]["remaining"],
              "remaining_after": after["remaining"], "status_after": after["status"],
              "results_dir": str(work)}
    lines = [f"loadtest of sale {sale_id} at {base}: {users} buyers for {seconds} s",
             f"{'request':<40} {'count':>8} {'fail':>6} {'req/s':>8} {'p50 ms':>8} "
             f"{'p99 ms':>8}"]
    lines += [f"{r['type'] + ' ' + r['name']:<40} {r['requests']:>8} {r['failures']:>6} "
              f"{r['requests_per_s']:>8} {r['p50_ms']:>8g} {r['p99_ms']:>8g}" for r in rows]
    lines.append(f"sale {sale_id}: remaining {result['remaining_before']} -> "
                 f"{result['remaining_after']} ({result['status_after']}); CSV in {work}")
    emit(result, as_json, "\n".join(lines))


async def sale_now(base: str, sale_id: int) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        return await _call(http, "GET", f"{base}/api/v1/sales/{sale_id}")
