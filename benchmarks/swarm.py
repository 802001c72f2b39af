"""``make swarm``: a Locust swarm against a locally started stack, headless, for a fixed
time, with CSV and HTML reports in benchmarks/results/swarm/.

    python -m benchmarks.swarm [--users 200] [--seconds 30] [--workers 2]

It migrates and seeds its own database, starts a gateway (N workers) and a reconciler,
creates buyers with a wallet and an address each and a flash sale, runs
benchmarks/locustfile.py, then audits the sale: the summary ends with oversold units
(computed) and whether Postgres agrees.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import uvloop

from benchmarks.common import BENCH_DATABASE_URL, BENCH_REDIS_URL, RESULTS, table
from cli.stack import Stack, make_buyers
from engine.connections import close_pool, create_pool, create_redis
from engine.migrate import migrate
from engine.sales import Sales
from engine.settings import Settings
from reconciler.audit import audit_sale

OUT = RESULTS / "swarm"
SECRET = "swarm-secret-0123456789abcdef0123456789abcdef"


async def prepare(settings: Settings, stack: Stack, admin: dict, buyers: int) -> dict:
    await migrate(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        if await conn.fetchval("SELECT count(*) FROM products") < 5000:
            env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url}
            await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "cli.main",
                                    "catalog", "seed", "--products", "5000"], env=env,
                                    check=True)
        users = await make_buyers(settings, buyers)
        ids = [u for u, _ in users]
        await conn.execute("UPDATE users SET wallet_balance = 100000 WHERE user_id = ANY($1)",
                           ids)
        addresses = dict(await conn.fetch(
            "INSERT INTO addresses (user_id, line1, city, postal_code, country)"
            " SELECT u, '1 Swarm Road', 'Springfield', '12345', 'US' FROM unnest($1::bigint[]) u"
            " RETURNING user_id, address_id", ids))
        methods = dict(await conn.fetch(
            "INSERT INTO payment_methods (user_id, type) SELECT u, 'wallet'"
            " FROM unnest($1::bigint[]) u RETURNING user_id, payment_method_id", ids))
        product_ids = [r[0] for r in await conn.fetch(
            "SELECT product_id FROM products p JOIN inventory i USING (product_id)"
            " WHERE i.available_qty > 100 AND p.status = 'active' ORDER BY random() LIMIT 500")]
        category_ids = [r[0] for r in await conn.fetch("SELECT category_id FROM categories")]
        terms = sorted({w.lower() for r in await conn.fetch(
            "SELECT name, brand FROM products ORDER BY product_id LIMIT 400")
            for w in f"{r['name']} {r['brand']}".split() if len(w) > 3 and w.isalpha()})
    finally:
        await conn.close()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.base_url}/api/v1/seller/products", headers=admin, json={
                "name": "Swarm Special", "brand": "Flash", "price": "299.00",
                "available_qty": 1000}) as r:
            product = await r.json()
        async with http.post(f"{stack.base_url}/api/v1/admin/sales", headers=admin, json={
                "product_id": product["product_id"], "quantity": 1000, "price": "99.00",
                "per_user_limit": 1}) as r:
            sale = await r.json()
    return {"sale_id": sale["sale_id"], "product_ids": product_ids, "category_ids": category_ids,
            "terms": terms[:200],
            "buyers": [{"user_id": u, "token": t, "address_id": addresses[u],
                        "payment_method_id": methods[u]} for u, t in users]}


def locust(host: str, data_file: Path, users: int, seconds: int) -> int:
    env = {**os.environ, "FLASHSALE_SWARM_FILE": str(data_file)}
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")),
         "--headless", "--users", str(users), "--spawn-rate", str(max(1, users // 5)),
         "--run-time", f"{seconds}s", "--host", host, "--csv", str(OUT / "swarm"),
         "--html", str(OUT / "report.html"), "--only-summary", "--loglevel", "WARNING"],
        env=env).returncode


def summary_rows() -> list[list]:
    rows = []
    with open(OUT / "swarm_stats.csv") as f:
        for r in csv.DictReader(f):
            rows.append([f"{r['Type']} {r['Name']}".strip(), int(r["Request Count"]),
                         int(r["Failure Count"]), float(r["Requests/s"]),
                         float(r["50%"]), float(r["99%"])])
    return rows


async def run(args: argparse.Namespace) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=BENCH_DATABASE_URL, redis_url=BENCH_REDIS_URL,
                        secret=SECRET)
    admin_token = secrets.token_urlsafe(24)
    stack = Stack(env={"FLASHSALE_DATABASE_URL": settings.database_url,
                       "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": SECRET,
                       "FLASHSALE_ADMIN_TOKEN": admin_token, "FLASHSALE_RATE_LIMIT": "0"},
                  log_dir=OUT, workers=args.workers)
    redis = create_redis(settings)
    await redis.flushdb()
    await migrate(settings.database_url)
    stack.start()
    try:
        await stack.wait_ready()
        data = await prepare(settings, stack, {"Authorization": f"Bearer {admin_token}"},
                             args.buyers)
        data_file = OUT / "swarm.json"
        data_file.write_text(json.dumps(data))
        print(f"swarm: {args.users} users for {args.seconds} s against {stack.base_url} "
              f"({args.workers} gateway workers); sale {data['sale_id']} of 1000 units")
        code = await asyncio.to_thread(locust, stack.base_url, data_file, args.users,
                                       args.seconds)
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            report = await audit_sale(Sales(pool=pool, redis=redis), data["sale_id"],
                                      wait_seconds=30)
        finally:
            await close_pool(pool)
    finally:
        stack.stop()
        await redis.aclose()
    print(table("Locust swarm (from swarm_stats.csv)",
                ["request", "count", "failures", "req/s", "p50 ms", "p99 ms"], summary_rows()))
    books = report.redis or {}
    agrees = "yes" if report.ok else f"NO {report.problems}"
    print(f"\nsale {report.sale_id}: held {books.get('held')}, confirmed "
          f"{books.get('confirmed')}, remaining {books.get('tokens')} of 1000; oversold "
          f"{report.oversold}; Postgres agrees: {agrees}")
    print(f"reports: {OUT.relative_to(OUT.parents[2])}/swarm_stats.csv, report.html")
    return 0 if report.ok and code in (0, 1) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--buyers", type=int, default=2000)
    return uvloop.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
