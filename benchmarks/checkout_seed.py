"""The checkout benchmark's world: its own database and Redis db, buyers with an address,
a card and a funded wallet, a catalog, carts and live flash-sale holds, and every buyer's
checkout request ready to send (benchmarks/checkout.py drives them)."""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from accounts.tokens import TokenSigner
from engine.admission import Admission
from engine.codec import encode
from engine.connections import create_pool, create_redis, with_database
from engine.keys import cart_key
from engine.migrate import migrate
from engine.sales import Sales
from engine.settings import Settings
from orders.cart import CART_TTL_SECONDS, CartLine

DATABASE = "flashsale_bench_orders"
REDIS_DB = 11
SECRET = "checkout-benchmark-secret-0123456789abcdef01"
PRODUCTS = 20_000  # a catalog big enough that plans look like production's

def bench_settings() -> Settings:
    base = Settings.from_env()
    parts = urlsplit(base.redis_url)
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_DB}", "", ""))
    return Settings.from_env(database_url=with_database(base.database_url, DATABASE),
                             redis_url=redis_url, secret=SECRET, rate_limit=0, db_pool_max=20)


async def reset(settings: Settings) -> None:
    admin = await asyncpg.connect(with_database(settings.database_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await admin.close()
    await migrate(settings.database_url)
    redis = create_redis(settings)
    await redis.flushdb()
    await redis.aclose()


async def seed(settings: Settings, buyers: int, rng: random.Random) -> list[dict]:
    """Every buyer's checkout request, ready to send."""
    pool = await create_pool(settings, min_size=1, max_size=4)
    redis = create_redis(settings)
    signer = TokenSigner(secret=SECRET, ttl_seconds=24 * 3600)
    try:
        prices = [Decimal(rng.randrange(199, 9999)) / 100 for _ in range(PRODUCTS)]
        await pool.copy_records_to_table(
            "products", columns=["name", "price"],
            records=[(f"Product {n}", p) for n, p in enumerate(prices)])
        product_ids = [r[0] for r in await pool.fetch(
            "SELECT product_id FROM products ORDER BY product_id")]
        await pool.execute("INSERT INTO inventory (product_id, available_qty)"
                           " SELECT product_id, 1000000 FROM products")
        await pool.execute("INSERT INTO coupons (code, percent_off) VALUES ('BENCH10', 10)")
        await pool.copy_records_to_table(
            "users", columns=["email", "name", "password_hash", "wallet_balance"],
            records=[(f"buyer{n}@bench.example", f"Buyer {n}", "x", Decimal("100000.00"))
                     for n in range(buyers)])
        users = [r[0] for r in await pool.fetch("SELECT user_id FROM users ORDER BY user_id")]
        await pool.copy_records_to_table(
            "addresses", columns=["user_id", "line1", "city", "postal_code", "country"],
            records=[(u, "1 Bench Way", "Loadtown", "00000", "US") for u in users])
        await pool.copy_records_to_table(
            "payment_methods", columns=["user_id", "type", "brand", "last4", "exp_month",
                                        "exp_year", "provider_token"],
            records=[rec for u in users for rec in (
                (u, "card", "visa", "4242", 12, 2099, f"tok_sim_approved_bench{u}"),
                (u, "wallet", None, None, None, None, None))])
        address = dict(await pool.fetch("SELECT user_id, address_id FROM addresses"))
        methods = {(r["user_id"], r["type"]): r["payment_method_id"] for r in await pool.fetch(
            "SELECT user_id, type, payment_method_id FROM payment_methods")}

        kinds = [rng.choices(("card", "wallet", "flash"), weights=(70, 20, 10))[0]
                 for _ in users]
        flash_users = [u for u, k in zip(users, kinds, strict=True) if k == "flash"]
        holds = await _flash_holds(pool, redis, product_ids[0], flash_users)

        requests = []
        pipe = redis.pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for user, kind in zip(users, kinds, strict=True):
            body = {"idempotency_key": f"bench-{user}", "shipping_address_id": address[user],
                    "payment_method_id": methods[(user, "wallet" if kind == "wallet"
                                                  else "card")]}
            if kind == "flash":
                body["reservation_id"] = holds[user]
            else:
                lines = rng.sample(range(1, PRODUCTS), rng.randint(1, 3))
                for n in lines:
                    line = CartLine(q=rng.randint(1, 3), p=prices[n], n=f"Product {n}",
                                    at=now_ms)
                    pipe.hset(cart_key(user), str(product_ids[n]), encode(line))
                pipe.expire(cart_key(user), CART_TTL_SECONDS)
                if rng.random() < 0.1:
                    body["coupon_code"] = "BENCH10"
            requests.append({"kind": kind, "body": body, "headers": {
                "Authorization": f"Bearer {signer.issue(user, 'customer')}"}})
        await pipe.execute()
        await pool.execute("ANALYZE")  # planner statistics, as a live database has them
        return requests
    finally:
        await redis.aclose()
        await pool.close()


async def _flash_holds(pool: asyncpg.Pool, redis, product_id: int,
                       users: list[int]) -> dict[int, str]:
    if not users:
        return {}
    sales = Sales(pool=pool, redis=redis)
    sale = await sales.create(product_id=product_id, quantity=len(users), price=Decimal("9.99"),
                              per_user_limit=1, hold_seconds=3600)
    admission = Admission(redis)
    holds = await asyncio.gather(*(admission.reserve(sale["sale_id"], u, 1, f"h{u}")
                                   for u in users))
    await admission.close()
    return {u: h.reservation_id for u, h in zip(users, holds, strict=True)}
