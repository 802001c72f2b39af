"""The chaos scenarios: each runs buyers against a fresh stack, injects one kind of fault
while they buy, restores the service the way an operator would (restart, `sale recover`,
`sale recover --force` when the audit finds Redis diverged), and checks the outcome
against every reservation the buyers were told they have."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp
import asyncpg

from chaos.servers import PrivatePostgres
from chaos.stack import Buyers, Ledger, Stack
from engine.connections import create_redis
from engine.keys import sale_keys
from engine.records import ReservationRecord
from engine.sales import Sales
from engine.settings import Settings
from reconciler.audit import audit_sale
from reconciler.lag import stream_lag
from reconciler.recovery import recover_sale


@dataclass(frozen=True)
class Params:
    buyers: int
    warmup: float  # seconds of buying before the fault
    after: float  # seconds of buying after the service is whole again
    kills: int  # reconciler SIGKILLs in the random-kill scenario
    behind: float  # seconds the reconciler is stopped before a Redis loss
    postgres_down: float
    pace: float  # seconds each buyer waits after a hold
    seed: int


QUICK = Params(buyers=12, warmup=2.0, after=0.3, kills=2, behind=1.0, postgres_down=3.0,
               pace=0.02, seed=10)
FULL = Params(buyers=64, warmup=5.0, after=3.0, kills=6, behind=2.0, postgres_down=30.0,
              pace=0.005, seed=10)


@dataclass
class Outcome:
    scenario: str
    durability: str
    promise: str  # what the durability setting promises about acknowledged holds
    acknowledged: int = 0
    lost: int = 0
    reused: int = 0
    oversold: int = 0
    audit: str = ""
    recover_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    ok: bool = False
    skipped: bool = False

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in (
            "scenario", "durability", "promise", "acknowledged", "lost", "reused", "oversold",
            "audit", "recover_seconds", "notes", "ok", "skipped")}


class Context:
    def __init__(self, stack: Stack, sales: Sales, sale_id: int, buyers: Buyers,
                 params: Params, postgres: PrivatePostgres | None,
                 probe: tuple[int, str]) -> None:
        self.stack, self.sales, self.sale_id, self.buyers = stack, sales, sale_id, buyers
        self.params, self.postgres = params, postgres
        self.rng = random.Random(params.seed)
        self.notes: list[str] = []
        self._probe_user, self._probe_token = probe
        self._probes = 0

    async def until_whole(self, timeout: float = 120.0) -> None:
        """Until a reservation is admitted again and Postgres has every event Redis has."""
        deadline = time.monotonic() + timeout
        admitted = False
        url = f"{self.stack.base}/api/v1/sales/{self.sale_id}/reservations"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                if not admitted:
                    self._probes += 1
                    key = f"probe-{self._probes}"
                    try:
                        async with http.post(url, json={"quantity": 1, "idempotency_key": key},
                                             headers={"Authorization":
                                                      f"Bearer {self._probe_token}"}) as resp:
                            if resp.status in (200, 201):
                                body = await resp.json()
                                self.buyers.ledger.record(body["reservation_id"],
                                                         self._probe_user, key)
                                admitted = True
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                if admitted:
                    try:
                        if (await stream_lag(self.sales.redis, self.sale_id)).pending == 0:
                            return
                    except Exception:  # Redis still coming back: ask again
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not become whole again")
                await asyncio.sleep(0.1)

    async def after_redis_restart(self) -> None:
        """What the operator does after Redis came back: `sale recover` when the sale is
        gone, then `sale recover --force` when the audit finds Redis diverged."""
        keys = sale_keys(self.sale_id)
        await _until(lambda: self.sales.redis.ping(), 30)
        if not await self.sales.redis.exists(keys.meta):
            result = await recover_sale(self.sales, self.sale_id)
            self.notes.append(f"sale recover: {result['reservations']} reservations from "
                              "Postgres")
        await self._drained(60)
        report = await audit_sale(self.sales, self.sale_id, wait_seconds=10)
        diverged = report.reservations and (report.reservations["lost_in_redis"]
                                            or report.reservations["differ"])
        if diverged:
            result = await recover_sale(self.sales, self.sale_id, force=True)
            self.notes.append(
                f"audit found {report.reservations['lost_in_redis']} lost in Redis; "
                f"recover --force restored {result['restored_to_redis']}")

    async def _drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (await stream_lag(self.sales.redis, self.sale_id)).pending:
            if time.monotonic() > deadline:
                raise RuntimeError("the reconciler did not drain")
            await asyncio.sleep(0.1)


async def _until(probe: Callable[[], Awaitable[object]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await probe()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- the faults ------------------------------------------------------------------------------
async def reconciler_sigkill(ctx: Context) -> None:
    """SIGKILL the reconciler at random moments (mid-read, mid-batch, mid-ack)."""
    for _ in range(ctx.params.kills):
        await asyncio.sleep(ctx.rng.uniform(0.2, 0.8))
        ctx.stack.reconciler.kill()
        ctx.stack.reconciler.start()
    await ctx.until_whole()


async def reconciler_commit_then_kill(ctx: Context) -> None:
    """The reconciler dies right after a commit, before its XACK: the batch is delivered
    again and must change nothing."""
    ctx.stack.reconciler.kill()
    ctx.stack.reconciler.start(FLASHSALE_FAULT_KILL_AFTER_COMMIT="2")
    await _wait(lambda: not ctx.stack.reconciler.alive(), 30, "the injected kill")
    assert b"fault injection" in ctx.stack.reconciler.log.read_bytes()
    ctx.stack.reconciler.start()
    await ctx.until_whole()


async def gateway_sigkill(ctx: Context) -> None:
    """SIGKILL one worker (the supervisor replaces it), then the parent (its workers die
    with it), then start the gateway again."""
    gateway = ctx.stack.gateway
    await _wait(lambda: len(gateway.children()) == 2, 20, "two workers")
    victim = gateway.children()[0]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    await _wait(lambda: len(gateway.children()) == 2 and victim not in gateway.children(),
                20, "a replacement worker")
    ctx.notes.append(f"worker replaced in {time.monotonic() - started:.1f} s")
    await asyncio.sleep(0.5)
    workers = gateway.children()
    gateway.kill()
    started = time.monotonic()
    await _wait(lambda: not any(_alive(w) for w in workers), 20, "orphan workers to exit")
    ctx.notes.append(f"workers followed their killed parent in {time.monotonic() - started:.1f} s")
    gateway.start()
    await ctx.stack.gateway_ready()
    await ctx.until_whole()


async def redis_sigkill(ctx: Context) -> None:
    """SIGKILL Redis and start it again from its AOF."""
    ctx.stack.redis.kill()
    await asyncio.sleep(0.3)
    ctx.stack.redis.start()
    await ctx.after_redis_restart()
    await ctx.until_whole()


async def os_crash(ctx: Context) -> None:
    """An OS crash under everysec: the AOF tail that was not fsynced is gone. The
    reconciler is behind (stopped) when it happens."""
    ctx.stack.reconciler.signal(signal.SIGSTOP)
    await asyncio.sleep(ctx.params.behind)
    ctx.stack.redis.kill()
    cut = ctx.stack.redis.truncate_aof(0.9)
    ctx.notes.append(f"AOF tail cut: {cut} bytes")
    ctx.stack.redis.start()
    ctx.stack.reconciler.signal(signal.SIGCONT)
    await ctx.after_redis_restart()
    await ctx.until_whole()


async def restart_without_aof(ctx: Context) -> None:
    """Redis restarted with no AOF (everything gone) while the reconciler is behind."""
    ctx.stack.reconciler.signal(signal.SIGSTOP)
    await asyncio.sleep(ctx.params.behind)
    ctx.stack.redis.kill()
    ctx.stack.redis.wipe()
    ctx.stack.redis.start()
    # Clients see 503 (not 404) until the operator recovers the sale.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ctx.stack.base}/api/v1/sales/{ctx.sale_id}") as resp:
            ctx.notes.append(f"sale read while lost: {resp.status}")
            if resp.status != 503:
                raise AssertionError(f"a lost sale answered {resp.status}, not 503")
    ctx.stack.reconciler.signal(signal.SIGCONT)
    await ctx.after_redis_restart()
    await ctx.until_whole()


async def postgres_stopped(ctx: Context) -> None:
    """Postgres stopped while buyers buy; admissions go on, the reconciler waits."""
    assert ctx.postgres is not None
    ctx.postgres.stop()
    await asyncio.sleep(ctx.params.postgres_down)
    ctx.postgres.start()
    await ctx.until_whole()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Context], Awaitable[None]]
    appendfsync: str | None
    nothing_lost: bool  # the durability setting promises no acknowledged hold is lost
    needs_private_postgres: bool = False


SCENARIOS = (
    Scenario("reconciler SIGKILL x N", reconciler_sigkill, "always", True),
    Scenario("reconciler SIGKILL after commit, before XACK", reconciler_commit_then_kill,
             "always", True),
    Scenario("gateway worker + parent SIGKILL", gateway_sigkill, "always", True),
    Scenario("Redis SIGKILL (appendfsync always)", redis_sigkill, "always", True),
    Scenario("OS crash (everysec, AOF tail cut), reconciler behind", os_crash, "everysec",
             False),
    Scenario("Redis restart without AOF, reconciler behind", restart_without_aof, None, False),
    Scenario("Postgres stopped", postgres_stopped, "always", True, needs_private_postgres=True),
)


# -- running and checking --------------------------------------------------------------------
async def run_scenario(scenario: Scenario, *, database_url: str,
                       postgres: PrivatePostgres | None, tokens: dict[int, str],
                       params: Params) -> Outcome:
    outcome = Outcome(scenario.name, scenario.appendfsync or "no AOF",
                      "nothing acknowledged lost" if scenario.nothing_lost else
                      "may lose the last ~1 s of holds")
    if scenario.needs_private_postgres and postgres is None:
        outcome.skipped, outcome.ok = True, True
        outcome.notes.append("no private Postgres (initdb/pg_ctl) here: skipped")
        return outcome
    slug = "-".join(scenario.name.lower().replace(",", "").replace("(", "")
                    .replace(")", "").split()[:3])
    stack = await Stack(slug, database_url=database_url,
                        appendfsync=scenario.appendfsync).start()
    redis = create_redis(Settings(redis_url=stack.redis.url, dependency_timeout=1.0))
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=4, timeout=2)
    sales = Sales(pool=pool, redis=redis)
    try:
        sale_id = await _new_sale(sales)
        probe, *others = sorted(tokens)
        buyers = Buyers(stack, sale_id, {u: tokens[u] for u in others},
                        count=params.buyers, pace=params.pace).start()
        ctx = Context(stack, sales, sale_id, buyers, params, postgres, (probe, tokens[probe]))
        await asyncio.sleep(params.warmup)
        started = time.monotonic()
        await scenario.run(ctx)
        outcome.recover_seconds = round(time.monotonic() - started, 1)
        await asyncio.sleep(params.after)
        ledger = await buyers.stop()
        await ctx.until_whole()
        outcome.notes += ctx.notes
        await _check(outcome, sales, sale_id, ledger, scenario)
    except Exception as exc:  # a scenario that cannot finish is a failed scenario
        outcome.ok = False
        outcome.audit = outcome.audit or "not reached"
        outcome.notes.append(f"{type(exc).__name__}: {exc}")
    finally:
        await redis.aclose()
        await pool.close()
        stack.close()
    return outcome


async def _new_sale(sales: Sales) -> int:
    product = await sales.pool.fetchval(
        "INSERT INTO products (name, price) VALUES ('Chaos gadget', 20) RETURNING product_id")
    await sales.pool.execute(
        "INSERT INTO inventory (product_id, available_qty) VALUES ($1, 1000000)", product)
    sale = await sales.create(product_id=product, quantity=1_000_000, price=Decimal("9.99"),
                              per_user_limit=1000, hold_seconds=3600)
    return sale["sale_id"]


async def _check(outcome: Outcome, sales: Sales, sale_id: int, ledger: Ledger,
                 scenario: Scenario) -> None:
    keys = sale_keys(sale_id)
    in_redis = {rid.decode(): ReservationRecord.parse(raw).user_id
                for rid, raw in (await sales.redis.hgetall(keys.res)).items()}
    in_postgres = {r["reservation_id"]: r["user_id"] for r in await sales.pool.fetch(
        "SELECT reservation_id, user_id FROM sale_reservations WHERE sale_id = $1", sale_id)}
    outcome.acknowledged = len(ledger.acked)
    lost = [rid for rid in ledger.acked if rid not in in_redis and rid not in in_postgres]
    outcome.lost = len(lost)
    # An id is reused when it was acknowledged for two requests, or when Redis or Postgres
    # name another owner than the buyer who was told it, or the reconciler met a conflict.
    wrong_owner = [rid for rid, owners in ledger.acked.items()
                   if any(store.get(rid, user) != user for store in (in_redis, in_postgres)
                          for user, _ in owners)]
    conflicts = await sales.pool.fetchval(
        "SELECT count(*) FROM sale_event_conflicts WHERE sale_id = $1", sale_id)
    outcome.reused = len(set(ledger.reused) | set(wrong_owner)) + conflicts
    report = await audit_sale(sales, sale_id, wait_seconds=30)
    pg = report.postgres or {}
    sale = await sales.get(sale_id)
    outcome.oversold = max(report.oversold,
                           pg.get("held", 0) + pg.get("confirmed", 0) - sale["quantity"], 0)
    outcome.audit = "clean" if report.ok else "; ".join(report.problems)[:200]
    outcome.ok = (outcome.reused == 0 and outcome.oversold == 0 and report.ok
                  and (outcome.lost == 0 or not scenario.nothing_lost))
    if lost:
        outcome.notes.append(f"lost (allowed by {outcome.durability}): e.g. {sorted(lost)[:3]}")
