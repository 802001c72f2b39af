"""The stock audit: the books must balance in Redis, and Postgres must agree.

In Redis, at every moment: ``initial = tokens + held + confirmed``, the counters agree with
the reservation records they summarise, and no buyer holds more than the limit. Once the
reconciler has drained the sale's stream, Postgres agrees unit for unit, by status.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.admission import STATES
from engine.errors import NotFound
from engine.keys import ACTIVE_SALES, sale_keys
from engine.sales import Sales
from reconciler.lag import stream_lag
from reconciler.report import postgres_books


@dataclass
class SaleAudit:
    sale_id: int
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    redis: dict[str, int] | None = None
    postgres: dict[str, int] | None = None
    lag: int = 0
    oversold: int = 0

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {"sale_id": self.sale_id, "ok": self.ok, "problems": self.problems,
                "redis": self.redis, "postgres": self.postgres, "lag": self.lag,
                "oversold": self.oversold}


async def _records(sales: Sales, sale_id: int) -> tuple[Counter, Counter]:
    """Units by state, and units per buyer (held or confirmed), from the reservation
    records."""
    units: Counter = Counter()
    per_buyer: Counter = Counter()
    async for _rid, raw in sales.redis.hscan_iter(sale_keys(sale_id).res, count=1000):
        user, qty, state, _expires, _order = raw.split(b":", 4)
        units[STATES[state]] += int(qty)
        if state in (b"h", b"c"):
            per_buyer[int(user)] += int(qty)
    return units, per_buyer


async def audit_sale(sales: Sales, sale_id: int, *, wait_seconds: float = 0.0) -> SaleAudit:
    report = SaleAudit(sale_id)
    try:
        sale = await sales.get(sale_id)
    except NotFound:
        report.fail("active in Redis but unknown to Postgres (Redis from another database?)")
        return report
    keys = sale_keys(sale_id)
    try:
        books = await sales.counts(sale_id)
    except KeyError:
        if sale["status"] != "loading":
            report.fail("Redis holds no state for this sale (lost? see `flashsale sale recover`)")
        return report
    report.redis = books
    initial, tokens, held, confirmed = (books["initial"], books["tokens"], books["held"],
                                        books["confirmed"])
    if initial != sale["quantity"]:
        report.fail(f"Redis initial {initial} != sale quantity {sale['quantity']} in Postgres")
    if initial != tokens + held + confirmed:
        report.fail(f"Redis books do not balance: initial {initial} != tokens {tokens} + held "
                    f"{held} + confirmed {confirmed}")
    if tokens < 0:
        report.fail(f"negative tokens: {tokens}")
    report.oversold = max(0, held + confirmed - initial)
    units, per_buyer = await _records(sales, sale_id)
    if units["held"] != held or units["confirmed"] != confirmed:
        report.fail(f"reservation records say held {units['held']}, confirmed "
                    f"{units['confirmed']}; counters say held {held}, confirmed {confirmed}")
    buyers = {int(u): int(q) for u, q in (await sales.redis.hgetall(keys.buyers)).items()
              if int(q)}
    if buyers != dict(+per_buyer):
        report.fail("per-buyer counts disagree with the reservation records")
    limit = sale["per_user_limit"]
    over = [u for u, q in per_buyer.items() if q > limit]
    if over:
        report.fail(f"{len(over)} buyers over the limit of {limit}: {sorted(over)[:5]}")

    # Postgres: only meaningful once every event is applied.
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        report.lag = (await stream_lag(sales.redis, sale_id)).pending
        if report.lag == 0 or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.2)
    pg = await postgres_books(sales, sale_id)
    report.postgres = pg
    if report.lag:
        report.fail(f"Postgres not compared: {report.lag} events not yet applied "
                    "(is `flashsale reconcile` running?)")
        return report
    for state in ("held", "confirmed", "released", "expired"):
        if pg[state] != units[state]:
            report.fail(f"{state}: Postgres {pg[state]} units, Redis {units[state]}")
    fresh = await sales.get(sale_id)
    for state in ("held", "confirmed", "released", "expired"):
        if fresh[f"{state}_qty"] != pg[state]:
            report.fail(f"flash_sales.{state}_qty {fresh[f'{state}_qty']} != reservation rows "
                        f"{pg[state]}")
    return report


async def audit(sales: Sales, sale_id: int | None = None, *,
                wait_seconds: float = 0.0) -> list[SaleAudit]:
    if sale_id is not None:
        return [await audit_sale(sales, sale_id, wait_seconds=wait_seconds)]
    active = {int(m) for m in await sales.redis.smembers(ACTIVE_SALES)}
    rows = await sales.pool.fetch("SELECT sale_id FROM flash_sales WHERE status <> 'closed'"
                                  " ORDER BY sale_id")
    ids = sorted(active | {r["sale_id"] for r in rows})
    return [await audit_sale(sales, s, wait_seconds=wait_seconds) for s in ids]
