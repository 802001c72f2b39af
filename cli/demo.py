"""flashsale demo: the main job on a fresh machine.

Migrate, seed a small catalog, start a gateway and a reconciler, put a product on flash
sale, let a few thousand simulated buyers (hundreds at once) fight for it over HTTP, wait
for the reconciler, audit, and print what happened. Everything it starts, it stops.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from cli.common import settings
from cli.stack import Stack, make_buyers

LOG_DIR = Path(".var") / "demo"


@dataclass
class Tally:
    attempts: int = 0
    retries: int = 0
    answers: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    holds: dict[str, int] = field(default_factory=dict)  # reservation id -> units
    owners: dict[str, tuple[int, dict]] = field(default_factory=dict)  # -> (user, headers)
    released: dict[str, int] = field(default_factory=dict)  # given back by the buyer
    unpaid: dict[str, int] = field(default_factory=dict)  # checkout refused: hold released
    paid: dict[str, int] = field(default_factory=dict)  # reservation id -> order id
    checkout_answers: Counter = field(default_factory=Counter)
    checkout_latencies: list[float] = field(default_factory=list)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


async def _ensure_catalog(products: int) -> None:
    import asyncpg

    config = settings()
    conn = await asyncpg.connect(config.database_url)
    try:
        have = await conn.fetchval("SELECT count(*) FROM products")
    finally:
        await conn.close()
    if have < products:
        click.echo(f"seeding a catalog of {products - have} products ...")
        await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "cli.main", "catalog", "seed", "--products",
            str(products - have)], check=True)


async def _reserve(http, base: str, user: tuple[int, str], sale_id: int, want: int,
                   rng: random.Random, tally: Tally, gate: asyncio.Semaphore) -> None:
    """One buyer's attempt; one in ten admitted buyers changes their mind at once, and the
    units go back on sale for the buyers still arriving."""
    user_id, token = user
    headers = {"Authorization": f"Bearer {token}"}
    body = {"quantity": want, "idempotency_key": f"demo-{user_id}"}
    url = f"{base}/api/v1/sales/{sale_id}/reservations"
    async with gate:
        for attempt in range(2):  # a flaky network: the retry reuses the same key
            started = time.perf_counter()
            try:
                async with http.post(url, json=body, headers=headers) as resp:
                    answer = await resp.json()
                    status = resp.status
            except OSError:
                tally.retries += 1
                continue
            tally.latencies.append(time.perf_counter() - started)
            tally.retries += attempt
            tally.attempts += 1 - attempt
            break
        else:
            tally.answers["network_error"] += 1
            return
        if status not in (200, 201):
            tally.answers[answer["error"]["code"] if status < 500 else f"http_{status}"] += 1
            return
        tally.answers["admitted"] += 1
        rid = answer["reservation_id"]
        tally.holds[rid] = answer["quantity"]
        tally.owners[rid] = (user_id, headers)
        if rng.random() < 0.1:
            async with http.delete(f"{base}/api/v1/reservations/{rid}", headers=headers) as r:
                if r.status == 200:
                    tally.released[rid] = answer["quantity"]


async def _checkout(http, base: str, admin: dict, user_id: int, headers: dict,
                    rid: str) -> tuple[int, dict]:
    """Pay a hold with the wallet: the admin credits it, the buyer adds an address, a
    wallet payment method, and places the order for the reservation."""
    async with http.post(f"{base}/api/v1/admin/wallets/{user_id}/credit",
                         json={"amount": "250.00"}, headers=admin) as r:
        r.raise_for_status()
    async with http.post(f"{base}/api/v1/me/addresses", headers=headers, json={
            "line1": "1 Demo Street", "city": "Springfield", "postal_code": "12345",
            "country": "US"}) as r:
        address = (await r.json())["address_id"]
    async with http.post(f"{base}/api/v1/me/payment-methods", headers=headers,
                         json={"type": "wallet"}) as r:
        method = (await r.json())["payment_method_id"]
    async with http.post(f"{base}/api/v1/orders", headers=headers, json={
            "idempotency_key": f"pay-{rid}", "reservation_id": rid,
            "shipping_address_id": address, "payment_method_id": method}) as r:
        return r.status, await r.json()


async def _pay(http, base: str, admin: dict, rid: str, tally: Tally,
               gate: asyncio.Semaphore) -> None:
    user_id, headers = tally.owners[rid]
    async with gate:
        started = time.perf_counter()
        status, order = await _checkout(http, base, admin, user_id, headers, rid)
        tally.checkout_latencies.append(time.perf_counter() - started)
        tally.checkout_answers[status] += 1
        if status in (200, 201):
            tally.paid[rid] = order["order_id"]
        elif status < 500:  # refused: the saga released the hold
            tally.unpaid[rid] = tally.holds[rid]


async def _waiting_rooms(http, base: str, admin: dict, users: list[tuple[int, str]],
                         units: int, rate: int) -> list[dict]:
    """The same small sale twice, through a stock-aware room and through a rate-only one:
    when did the last buyer know it was sold out? Admitted buyers pay with the wallet."""
    from cli.room_scenario import learn_sold_out

    async def pay(rid: str, user_id: int, headers: dict) -> bool:
        status, _ = await _checkout(http, base, admin, user_id, headers, rid)
        return status in (200, 201)

    buyers = [(u, {"Authorization": f"Bearer {t}"}) for u, t in users]
    results = []
    for aware in (True, False):
        async with http.post(f"{base}/api/v1/seller/products", headers=admin,
                             json={"name": "Sneaker Drop", "brand": "Flash", "price": "199.00",
                                   "available_qty": units}) as r:
            product = await _created(r, "the product")
        async with http.post(f"{base}/api/v1/admin/sales", headers=admin, json={
                "product_id": product["product_id"], "quantity": units, "price": "99.00",
                "waiting_room": True, "admission_rate": rate, "stock_aware": aware}) as r:
            sale = await _created(r, "the waiting-room sale")
        click.echo(f"waiting room ({'stock-aware' if aware else 'rate-only'}): sale "
                   f"{sale['sale_id']}, {units} units, {len(buyers):,} buyers join at once, "
                   f"{rate} passes/s ...")
        result = await learn_sold_out(http, base, sale["sale_id"], buyers, poll=1.0, pay=pay)
        results.append({"room": "stock-aware" if aware else "rate-only",
                        "sale_id": sale["sale_id"], "units": units, "rate": rate, **result})
    return results


async def _created(resp, what: str) -> dict:
    """The body of a create call, or one line naming what the API refused and why (a
    Redis still holding another sale under the same id, say, after the database was
    reset: the API's 409 says so)."""
    body = await resp.json(content_type=None)
    if resp.status not in (200, 201):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise click.ClickException(
            f"the demo could not create {what}: HTTP {resp.status} "
            f"{error.get('code', '')}: {error.get('message', body)}")
    return body


async def _run(buyers: int, concurrency: int, units: int, limit: int, seed: int,
               room_buyers: int) -> dict:
    import aiohttp

    from cli.common import with_sales
    from engine.migrate import migrate
    from reconciler.audit import audit_sale

    config = settings()
    click.echo("migrating ...")
    await migrate(config.database_url)
    await _ensure_catalog(2000)
    admin_token = config.admin_token or secrets.token_urlsafe(24)
    stack = Stack(env={"FLASHSALE_ADMIN_TOKEN": admin_token, "FLASHSALE_RATE_LIMIT": "0",
                       "FLASHSALE_QUEUE_JOIN_RATE": "0",  # every buyer comes from here
                       "FLASHSALE_SECRET": config.secret}, log_dir=LOG_DIR)
    admin = {"Authorization": f"Bearer {admin_token}"}
    click.echo(f"starting gateway on {stack.base_url} and reconciler "
               f"(logs in {LOG_DIR}/) ...")
    stack.start()
    try:
        await stack.wait_ready()
        users = await make_buyers(config, buyers)
        rng = random.Random(seed)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(f"{stack.base_url}/api/v1/seller/products", headers=admin,
                                 json={"name": "Limited Edition Console", "brand": "Flash",
                                       "price": "499.00", "available_qty": units}) as r:
                product = await _created(r, "the product")
            async with http.post(f"{stack.base_url}/api/v1/admin/sales", headers=admin, json={
                    "product_id": product["product_id"], "quantity": units, "price": "49.00",
                    "per_user_limit": limit}) as r:
                sale = await _created(r, "the sale")
            click.echo(f"sale {sale['sale_id']}: {units} units at {sale['price']}, "
                       f"{limit} per buyer; {buyers} buyers, {concurrency} at once ...")
            tally = Tally()
            gate = asyncio.Semaphore(concurrency)
            started = time.perf_counter()
            await asyncio.gather(*(
                _reserve(http, stack.base_url, u, sale["sale_id"], rng.choice((1, 1, 1, 2)),
                         rng, tally, gate) for u in users))
            elapsed = time.perf_counter() - started
            to_pay = [rid for rid in tally.holds if rid not in tally.released]
            click.echo(f"{len(to_pay)} holds to pay; checking out with wallets ...")
            pay_gate = asyncio.Semaphore(50)
            await asyncio.gather(*(_pay(http, stack.base_url, admin, rid, tally, pay_gate)
                                   for rid in to_pay))
            rooms = await _waiting_rooms(http, stack.base_url, admin,
                                         await make_buyers(config, room_buyers), 30, 100
                                         ) if room_buyers else []
        click.echo("waiting for the reconciler, then auditing ...")
        report = await with_sales(lambda s: audit_sale(s, sale["sale_id"], wait_seconds=30))
    finally:
        stopped = stack.stop()
    admitted_units = sum(tally.holds.values())
    released_units = sum(tally.released.values())
    # What buyers were told they hold or bought: every admission, less what was given back.
    http_net = admitted_units - released_units - sum(tally.unpaid.values())
    redis = report.redis or {}
    pg = report.postgres or {}
    return {
        "sale_id": sale["sale_id"], "units": units, "per_user_limit": limit,
        "buyers": buyers, "concurrency": concurrency, "attempts": tally.attempts,
        "retries_same_key": tally.retries, "seconds": round(elapsed, 2),
        "requests_per_second": round((tally.attempts + tally.retries) / elapsed),
        "answers": dict(tally.answers), "holds": len(tally.holds),
        "units_admitted": admitted_units, "units_released_by_buyers": released_units,
        "orders_paid": len(tally.paid), "checkout_answers": dict(tally.checkout_answers),
        "checkout_latency_ms": {"p50": round(_pct(tally.checkout_latencies, 50) * 1000, 2),
                                "p99": round(_pct(tally.checkout_latencies, 99) * 1000, 2)},
        "latency_ms": {"p50": round(_pct(tally.latencies, 50) * 1000, 2),
                       "p99": round(_pct(tally.latencies, 99) * 1000, 2)},
        "oversold": {"by_http_answers": max(0, http_net - units),
                     "in_redis": max(0, redis.get("held", 0) + redis.get("confirmed", 0)
                                     - units),
                     "in_postgres": max(0, pg.get("held", 0) + pg.get("confirmed", 0) - units)},
        "redis": redis, "postgres": pg, "audit_ok": report.ok, "audit_problems": report.problems,
        "stopped": stopped, "waiting_rooms": rooms,
    }


def _summary(r: dict) -> str:
    a = r["answers"]
    oversold = max(r["oversold"].values())
    refused = {k: v for k, v in a.items() if k != "admitted"}
    pg = r["postgres"]
    lines = [
        "",
        f"flash sale {r['sale_id']}: {r['units']} units, limit {r['per_user_limit']} per buyer",
        f"  buyers          {r['buyers']:,} ({r['concurrency']} at once) in {r['seconds']} s, "
        f"{r['requests_per_second']:,} requests/s",
        f"  attempts        {r['attempts']:,} reservation requests "
        f"(+{r['retries_same_key']} retries with the same idempotency key)",
        f"  admitted        {r['holds']:,} holds, {r['units_admitted']:,} units "
        f"({r['units_released_by_buyers']} given back by buyers and resold)",
        f"  sold out        {a.get('sold_out', 0):,} answers 409 sold_out",
        "  other answers   " + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())
                                          if k != "sold_out") or "none"),
        f"  paid orders     {r['orders_paid']:,} of {sum(r['checkout_answers'].values()):,} "
        f"checkouts (wallet), p50 {r['checkout_latency_ms']['p50']} ms, "
        f"p99 {r['checkout_latency_ms']['p99']} ms",
        f"  latency         p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms "
        "(reservation requests, over HTTP)",
        f"  oversold        {oversold}  (HTTP answers {r['oversold']['by_http_answers']}, "
        f"Redis {r['oversold']['in_redis']}, Postgres {r['oversold']['in_postgres']})",
        f"  postgres agrees {'yes' if r['audit_ok'] else 'NO'}: held {pg.get('held', 0)}, "
        f"confirmed {pg.get('confirmed', 0)}, released {pg.get('released', 0)}, "
        f"expired {pg.get('expired', 0)} units; audit "
        + ("OK" if r["audit_ok"] else "FAILED: " + "; ".join(r["audit_problems"])),
    ]
    for room in r["waiting_rooms"]:
        lines.append(
            f"  waiting room    {room['room']:<11} {room['buyers']:,} buyers for "
            f"{room['units']} units at {room['rate']} passes/s: the last knew it was sold out "
            f"after {room['last_knew_s']} s (median {room['median_knew_s']} s); "
            f"{room['passes']:,} passes, {room['bought']} paid")
    return "\n".join(lines)


@click.command()
@click.option("--buyers", type=click.IntRange(1, 100_000), default=3000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 2000), default=300, show_default=True,
              help="Buyers in flight at once.")
@click.option("--units", type=click.IntRange(1), default=500, show_default=True)
@click.option("--per-user-limit", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--room-buyers", type=click.IntRange(0, 100_000), default=2000, show_default=True,
              help="Then this many buyers through a 30-unit sale's waiting room, stock-aware "
                   "and rate-only (0: skip).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(buyers: int, concurrency: int, units: int, per_user_limit: int, seed: int,
         room_buyers: int, as_json: bool) -> None:
    """Run a flash sale with thousands of simulated buyers and summarise it."""
    from cli.common import run

    result = run(_run(buyers, concurrency, units, per_user_limit, seed, room_buyers))
    click.echo(json.dumps(result, indent=2, default=str) if as_json else _summary(result))
    if max(result["oversold"].values()) or not result["audit_ok"]:
        sys.exit(1)
