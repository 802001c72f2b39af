"""Checkout latency at a steady 200 orders per second, over HTTP, open loop.

    python -m benchmarks.checkout --quick     (20 s measured, under a minute in all)
    python -m benchmarks.checkout --full      (120 s measured)

Seeds its own database (flashsale_bench_orders) and Redis db (11): buyers with an address,
a card (approved test card) and a funded wallet, a catalog, a cart of 1-3 lines for every
cart buyer, and a live flash-sale hold for every flash buyer. Starts a gateway
(``flashsale serve``) in a subprocess, then schedules one checkout every 1/rate seconds
whatever the answers (open loop: a slow answer does not slow the arrivals) and measures
each latency from its scheduled time, so queueing delay counts. The mix: 70% cart by card,
20% cart by wallet (10% of cart orders with a coupon), 10% flash holds by card.

Prints p50/p90/p99/p999 and the answers in a table, checks that Postgres agrees (one paid
order per 201, stock never below zero), and writes benchmarks/results/checkout-<mode>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from decimal import Decimal
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import uvloop

from accounts.tokens import TokenSigner
from benchmarks.common import latency_summary, percentile, table, write_results
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
MODES = {"quick": {"seconds": 20.0, "warmup": 3.0}, "full": {"seconds": 120.0, "warmup": 10.0}}


def bench_settings() -> Settings:
    base = Settings.from_env()
    parts = urlsplit(base.redis_url)
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_DB}", "", ""))
    return Settings.from_env(database_url=with_database(base.database_url, DATABASE),
                             redis_url=redis_url, secret=SECRET, rate_limit=0, db_pool_max=20)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """Once a second: how busy the machine was, and how much of that was this benchmark
    (load generator, gateway, the Postgres backends of its database). On a shared machine
    the rest ("others") explains a stall that is not the system's doing."""

    def __init__(self, gateway_pid: int) -> None:
        self.gateway_pid = gateway_pid
        self.samples: list[dict] = []
        self._task: asyncio.Task | None = None

    @staticmethod
    def _machine() -> tuple[int, int]:
        values = list(map(int, open("/proc/stat").readline().split()[1:]))
        return sum(values) - values[3] - values[4], sum(values)  # busy, total (jiffies)

    def _ours(self) -> dict[int, float]:
        """CPU seconds so far of each process of this benchmark."""
        mine = {os.getpid(): cpu_seconds(os.getpid()),
                self.gateway_pid: cpu_seconds(self.gateway_pid)}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if DATABASE in open(f"/proc/{pid}/cmdline").read():
                        mine[int(pid)] = cpu_seconds(int(pid))
                except OSError:
                    continue
        return mine

    async def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        busy, total, ours = *self._machine(), self._ours()
        while True:
            await asyncio.sleep(1.0)
            busy2, total2, ours2 = *self._machine(), self._ours()
            span = (total2 - total) / tick  # CPU-seconds available in the interval
            used = (busy2 - busy) / tick
            mine = sum(t - ours.get(pid, 0.0) for pid, t in ours2.items())  # new pids: all
            self.samples.append({"busy_pct": round(min(100.0, 100 * used / span), 1),
                                 "others_pct": round(min(100.0, 100 * max(0.0, used - mine)
                                                         / span), 1)})
            busy, total, ours = busy2, total2, ours2

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Autovacuum:
    """Autovacuum's policy, applied to the benchmark's database every minute: VACUUM a
    table once dead rows pass 50 + 20% of its rows, ANALYZE it once changes pass 50 + 10%,
    throttled by the same cost delay. The shared development server runs with autovacuum
    off; without this, dead rows and plans made on empty tables pile up over a long run."""

    VACUUM_BASE, VACUUM_SCALE, ANALYZE_BASE, ANALYZE_SCALE = 50, 0.2, 50, 0.1

    def __init__(self, settings: Settings, *, every: float = 60.0) -> None:
        self.url = settings.database_url
        self.every = every  # autovacuum_naptime's default
        self.vacuums = self.analyzes = 0
        self._task: asyncio.Task | None = None

    async def once(self, *, analyze_all: bool = False, pause: float = 0.0) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200")
            if analyze_all:
                await conn.execute("ANALYZE")
                self.analyzes += 1
            rows = await conn.fetch(
                "SELECT relname, n_live_tup, n_dead_tup, n_mod_since_analyze"
                " FROM pg_stat_user_tables")
            for r in rows:
                table = '"' + r["relname"].replace('"', '""') + '"'
                if r["n_dead_tup"] > self.VACUUM_BASE + self.VACUUM_SCALE * r["n_live_tup"]:
                    await conn.execute(f"VACUUM (ANALYZE) {table}")
                    self.vacuums += 1
                    self.analyzes += 1
                elif (r["n_mod_since_analyze"]
                      > self.ANALYZE_BASE + self.ANALYZE_SCALE * r["n_live_tup"]):
                    await conn.execute(f"ANALYZE {table}")
                    self.analyzes += 1
                else:
                    continue
                await asyncio.sleep(pause)  # one table at a time, as one worker would
        finally:
            await conn.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.once(pause=1.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- seeding -----------------------------------------------------------------------------
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


# -- the gateway -------------------------------------------------------------------------
async def start_gateway(settings: Settings, port: int, workers: int
                        ) -> asyncio.subprocess.Process:
    env = {**os.environ, "FLASHSALE_DATABASE_URL": settings.database_url,
           "FLASHSALE_REDIS_URL": settings.redis_url, "FLASHSALE_SECRET": SECRET,
           "FLASHSALE_RATE_LIMIT": "0", "FLASHSALE_DB_POOL_MAX": str(settings.db_pool_max)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers",
        str(workers), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            if proc.returncode is not None:
                raise RuntimeError((await proc.stderr.read()).decode())
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the gateway did not become ready")


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- the load ----------------------------------------------------------------------------
class Sample(NamedTuple):
    """One answer. A tuple of atomic values: the garbage collector stops tracking it, so a
    long run's samples do not make the load generator's own GC pauses grow."""
    kind: str
    status: int | str
    key: str
    latency: float  # from the scheduled time
    service: float  # from the moment it was sent
    lag: float  # sent - scheduled: the load generator's own delay
    done: float


async def drive(url: str, requests: list[dict], rate: float) -> list[Sample]:
    """Send request i at start + i/rate (open loop); latency from that scheduled time."""
    results: list[Sample] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
        start = clock() + 0.2

        async def one(scheduled: float, req: dict) -> None:
            sent = clock()
            try:
                async with session.post(url, json=req["body"], headers=req["headers"]) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as exc:
                status = f"error: {type(exc).__name__}"
            done = clock()
            results.append(Sample(req["kind"], status, req["body"]["idempotency_key"],
                                  done - scheduled, done - sent, sent - scheduled, done - start))

        # Each arrival is started at its time, whatever happened to the earlier ones; the
        # tasks are created as they are due, not all at once (that would stall the start).
        in_flight: set[asyncio.Task] = set()
        for i, req in enumerate(requests):
            scheduled = start + i / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled, req))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    return results


async def verify(settings: Settings, created_keys: list[str]) -> dict:
    """Postgres agrees with the answers: every 201 is a paid order, every paid order
    belongs to a completed checkout (a 503'd one may have been completed by recovery),
    nothing is left running, no stock below zero."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        paid = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'paid'")
        missing = await conn.fetchval(
            "SELECT count(*) FROM unnest($1::text[]) AS k(key) WHERE NOT EXISTS ("
            " SELECT 1 FROM orders o WHERE o.idempotency_key = k.key AND o.status = 'paid')",
            created_keys)
        completed = await conn.fetchval(
            "SELECT count(*) FROM checkouts WHERE state = 'completed'")
        negative = await conn.fetchval(
            "SELECT count(*) FROM inventory WHERE available_qty < 0 OR sold_qty < 0")
        unfinished = await conn.fetchval("SELECT count(*) FROM checkouts WHERE state = 'running'")
        money = await conn.fetchval("SELECT coalesce(sum(total), 0) FROM orders")
    finally:
        await conn.close()
    agree = missing == 0 and paid == completed and unfinished == 0 and negative == 0
    return {"answered_201": len(created_keys), "paid_orders": paid,
            "completed_checkouts": completed, "answered_201_without_order": missing,
            "checkouts_unfinished": unfinished, "negative_stock_rows": negative,
            "agree": agree, "revenue": str(money)}


def per_second(results: list[Sample]) -> list[dict]:
    """Latency by second of the run (scheduled time): shows a stall, not just a tail."""
    buckets: dict[int, list[float]] = {}
    for r in results:
        buckets.setdefault(int(r.done - r.latency), []).append(r.latency * 1000)
    return [{"second": sec, "orders": len(ms), "p50_ms": round(percentile(ms, 50), 1),
             "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1)}
            for sec, ms in sorted(buckets.items())]


async def run(mode: str, rate: float, seconds: float | None, seed_value: int,
              workers: int) -> dict:
    settings = bench_settings()
    plan = MODES[mode]
    seconds = seconds or plan["seconds"]
    warm_n, measured_n = int(plan["warmup"] * rate), int(seconds * rate)
    settle_n = int(2 * rate)
    rng = random.Random(seed_value)
    t = time.perf_counter()
    await reset(settings)
    requests = await seed(settings, warm_n + settle_n + measured_n, rng)
    seeded = time.perf_counter() - t
    # The seeded requests live for the whole run: out of the collector's way, so that its
    # pauses in this process are not measured as checkout latency.
    gc.collect()
    gc.freeze()
    port = free_port()
    proc = await start_gateway(settings, port, workers)
    url = f"http://127.0.0.1:{port}/api/v1/orders"
    try:
        warm = await drive(url, requests[:warm_n], rate)
        # The order tables start empty; a live database's are not. Statistics taken now
        # let the gateway's cached plans use their indexes (a plan made while a table
        # looked empty scans it whole, and is kept until the next analyze).
        upkeep = Autovacuum(settings)
        await upkeep.once(analyze_all=True)
        # The gateway plans its statements again with those statistics: not measured.
        warm += await drive(url, requests[warm_n:warm_n + settle_n], rate)
        upkeep.start()
        cpu_before = cpu_seconds(proc.pid)
        watch = CpuWatch(proc.pid)
        watch.start()
        results = await drive(url, requests[warm_n + settle_n:], rate)
        await watch.stop()
        await upkeep.stop()
        gateway_cpu = cpu_seconds(proc.pid) - cpu_before  # workers: their parent only
    finally:
        await stop_gateway(proc)
    statuses = Counter(str(r.status) for r in results)
    created = [r.key for r in warm + results if r.status == 201]
    elapsed = max(r.done for r in results)
    by_kind = {}
    for kind in ("card", "wallet", "flash"):
        mine = [r.latency for r in results if r.kind == kind]
        by_kind[kind] = {"orders": len(mine), **latency_summary(mine)}
    ms = [r.latency * 1000 for r in results]
    summary = {**latency_summary([r.latency for r in results]),
               "p90_ms": round(percentile(ms, 90), 3), "max_ms": round(max(ms), 3)}
    return {"rate_per_second": rate, "seconds": seconds, "workers": workers,
            "orders": len(results),
            "achieved_per_second": round(len(results) / elapsed, 1),
            "statuses": dict(statuses), "latency": summary,
            "service_time": latency_summary([r.service for r in results]),
            "send_lag": latency_summary([r.lag for r in results]),
            "by_kind": by_kind, "check": await verify(settings, created),
            "gateway_cpu_ms_per_order": round(gateway_cpu * 1000 / len(results), 3),
            "load_average_after": os.getloadavg()[0],
            "seed_seconds": round(seeded, 1), "warmup_orders": warm_n + settle_n,
            "autovacuum": {"vacuums": upkeep.vacuums, "analyzes": upkeep.analyzes},
            "warmup_statuses": dict(Counter(str(r.status) for r in warm)),
            "per_second": [{**sec, **cpu} for sec, cpu in
                           zip(per_second(results), watch.samples, strict=False)],
            "machine_busy_pct": round(sum(c["busy_pct"] for c in watch.samples)
                                      / max(1, len(watch.samples)), 1),
            "others_cpu_pct_max": max((c["others_pct"] for c in watch.samples), default=0.0)}


def report(mode: str, data: dict) -> str:
    lat, svc = data["latency"], data["service_time"]
    rows = [["all (from scheduled time)", data["orders"], lat["p50_ms"], lat["p90_ms"],
             lat["p99_ms"], lat["p999_ms"], lat["max_ms"]],
            ["all (service time)", data["orders"], svc["p50_ms"], "", svc["p99_ms"],
             svc["p999_ms"], ""]]
    for kind, s in data["by_kind"].items():
        rows.append([f"{kind} (from scheduled time)", s["orders"], s["p50_ms"], "",
                     s["p99_ms"], s["p999_ms"], ""])
    out = table(f"checkout at {data['rate_per_second']:.0f}/s for {data['seconds']:.0f} s "
                f"({mode}, {data['workers']} gateway worker(s)), open loop, ms",
                ["orders", "n", "p50", "p90", "p99", "p999", "max"], rows)
    check = data["check"]
    worst = max(data["per_second"], key=lambda b: b["p99_ms"])
    return (f"{out}\n\nachieved {data['achieved_per_second']}/s; answers {data['statuses']}; "
            f"gateway CPU {data['gateway_cpu_ms_per_order']} ms per order; machine busy "
            f"{data['machine_busy_pct']}% of {os.cpu_count()} CPUs; worst second: "
            f"#{worst['second']} p99 {worst['p99_ms']} ms (other processes then used "
            f"{worst.get('others_pct', '?')}% of the machine; at most "
            f"{data['others_cpu_pct_max']}% during the run)\n"
            f"Postgres agrees: {check['agree']} ({check['paid_orders']} paid orders, "
            f"{check['answered_201']} answered 201 (warm-up included), "
            f"{check['answered_201_without_order']} of them without an order, "
            f"{check['checkouts_unfinished']} checkouts unfinished, "
            f"{check['negative_stock_rows']} stock rows below zero)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkout",
                                     description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_const", dest="mode", const="quick")
    which.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=None, help="measured duration")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    args = parser.parse_args(argv)
    mode = args.mode or "quick"
    data = uvloop.run(run(mode, args.rate, args.seconds, args.seed, args.workers))
    print(report(mode, data))
    path = write_results("checkout", mode, data)
    print(f"\nwrote {path}")
    return 0 if data["check"]["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
