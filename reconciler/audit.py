"""The stock audit: the books must balance in Redis, and Postgres must agree.

In Redis, at every moment: ``initial = tokens + held + confirmed`` (+ units in transit
between the buckets of a sale split into buckets, each bucket balancing by itself), the
counters agree with
the reservation records they summarise, and no buyer holds more than the limit. Once the
reconciler has drained the sale's stream, Postgres agrees unit for unit, by status, and
reservation by reservation: the same ids, each with the same owner, quantity and state
(ids Redis lost that Postgres knows, and ids Postgres never saw, are listed). Events the
reconciler refused to merge (a reused id) or parked (Postgres refused them) fail the audit
until an operator has dealt with them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.buckets import all_keys, in_transit_records
from engine.errors import NotFound
from engine.keys import ACTIVE_SALES, bucket_of_reservation, sale_keys, units_by_buyer
from engine.records import ReservationRecord
from engine.sales import Sales
from reconciler.lag import stream_lag
from reconciler.report import parked, postgres_books


@dataclass
class SaleAudit:
    sale_id: int
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    redis: dict[str, int] | None = None
    postgres: dict[str, int] | None = None
    lag: int = 0
    oversold: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    reservations: dict[str, Any] | None = None  # per-reservation comparison

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {"sale_id": self.sale_id, "ok": self.ok, "problems": self.problems,
                "redis": self.redis, "postgres": self.postgres, "lag": self.lag,
                "oversold": self.oversold, "conflicts": self.conflicts,
                "dead_letters": self.dead_letters, "reservations": self.reservations}


Record = tuple[int, int, str]  # user, quantity, state


async def _records(sales: Sales, sale_id: int, buckets: int = 1
                   ) -> tuple[Counter, Counter, dict[str, Record]]:
    """Units by state, units per buyer (held or confirmed), and every reservation, from
    the reservation records of every bucket."""
    units: Counter = Counter()
    per_buyer: Counter = Counter()
    records: dict[str, Record] = {}
    for keys in all_keys(sale_id, buckets):
        async for rid, raw in sales.redis.hscan_iter(keys.res, count=1000):
            record = ReservationRecord.parse(raw)
            units[record.state] += record.quantity
            if record.state in ("held", "confirmed"):
                per_buyer[record.user_id] += record.quantity
            records[rid.decode()] = (record.user_id, record.quantity, record.state)
    return units, per_buyer, records


async def _postgres_records(sales: Sales, sale_id: int) -> dict[str, Record]:
    return {r["reservation_id"]: (r["user_id"], r["quantity"], r["status"])
            for r in await sales.pool.fetch(
                "SELECT reservation_id, user_id, quantity, status FROM sale_reservations"
                " WHERE sale_id = $1", sale_id)}


def compare_reservations(redis: dict[str, Record], postgres: dict[str, Record],
                         *, show: int = 5) -> dict[str, Any]:
    """Reservation by reservation: ids only Postgres knows (Redis lost them), ids Postgres
    never saw, and ids both know with another owner, quantity or state."""
    lost = sorted(postgres.keys() - redis.keys())
    unseen = sorted(redis.keys() - postgres.keys())
    differ = sorted(rid for rid in redis.keys() & postgres.keys()
                    if redis[rid] != postgres[rid])
    return {"compared": len(redis.keys() & postgres.keys()),
            "lost_in_redis": len(lost), "lost_in_redis_ids": lost[:show],
            "unseen_by_postgres": len(unseen), "unseen_by_postgres_ids": unseen[:show],
            "differ": len(differ),
            "differ_examples": [{"reservation_id": rid, "redis": list(redis[rid]),
                                 "postgres": list(postgres[rid])} for rid in differ[:show]]}


async def _settle(sales: Sales, sale_id: int, redis: dict[str, Record],
                  postgres: dict[str, Record], *, wait_seconds: float = 5.0) -> None:
    """Reservations Postgres lacks or shows in another state may just be newer than the
    Postgres snapshot (buyers still buying): once the reconciler has drained again, read
    those ids afresh on both sides, so only real differences remain."""
    suspects = [rid for rid, rec in redis.items() if postgres.get(rid) != rec]
    if not suspects:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while (await stream_lag(sales.redis, sale_id)).pending and loop.time() < deadline:
        await asyncio.sleep(0.1)
    for r in await sales.pool.fetch(
            "SELECT reservation_id, user_id, quantity, status FROM sale_reservations"
            " WHERE reservation_id = ANY($1)", suspects):
        postgres[r["reservation_id"]] = (r["user_id"], r["quantity"], r["status"])
    raws = [await sales.redis.hget(sale_keys(*(bucket_of_reservation(rid) or (sale_id, 0))).res,
                                   rid) for rid in suspects]
    for rid, raw in zip(suspects, raws, strict=True):
        if raw is not None:
            record = ReservationRecord.parse(raw)
            redis[rid] = (record.user_id, record.quantity, record.state)


def _report_parked(report: SaleAudit, conflicts: int, dead_letters: int) -> None:
    report.conflicts, report.dead_letters = conflicts, dead_letters
    if conflicts:
        report.fail(f"{conflicts} events named a reservation id already held by another buyer "
                    f"(a reused id; see `flashsale sale parked {report.sale_id}`)")
    if dead_letters:
        report.fail(f"{dead_letters} events refused by Postgres were parked "
                    f"(see `flashsale sale parked {report.sale_id}`)")


async def audit_sale(sales: Sales, sale_id: int, *, wait_seconds: float = 0.0) -> SaleAudit:
    report = SaleAudit(sale_id)
    try:
        sale = await sales.get(sale_id)
    except NotFound:
        report.fail("active in Redis but unknown to Postgres (Redis from another database?)")
        return report
    _report_parked(report, **await parked(sales, sale_id))
    try:
        books = await sales.counts(sale_id)
    except KeyError:
        if sale["status"] != "loading":
            known = len(await _postgres_records(sales, sale_id))
            report.fail(f"Redis holds no state for this sale ({known} reservations Postgres "
                        "knows are lost there; see `flashsale sale recover`)")
        return report
    report.redis = books
    initial, tokens, held, confirmed = (books["initial"], books["tokens"], books["held"],
                                        books["confirmed"])
    if initial != sale["quantity"]:
        report.fail(f"Redis initial {initial} != sale quantity {sale['quantity']} in Postgres")
    in_transit, count = books["in_transit"], books["buckets"]
    if initial != tokens + held + confirmed + in_transit:
        report.fail(f"Redis books do not balance: initial {initial} != tokens {tokens} + held "
                    f"{held} + confirmed {confirmed} + in transit {in_transit}")
    if count != sale["buckets"]:
        report.fail(f"Redis has {count} buckets, Postgres {sale['buckets']}")
    if books["buckets_missing"] or books["buckets_unbalanced"]:
        report.fail(f"of {count} buckets, {books['buckets_missing']} are missing in Redis and "
                    f"{books['buckets_unbalanced']} do not balance by themselves")
    if count > 1 and in_transit != await in_transit_records(sales.redis, sale_id, count):
        await asyncio.sleep(0.5)  # a transfer between its two steps: read again
        recorded = await in_transit_records(sales.redis, sale_id, count)
        in_transit = (await sales.counts(sale_id))["in_transit"]
        if in_transit != recorded:
            report.fail(f"{in_transit} units in transit by the counters, {recorded} by the "
                        "transfer records")
    if tokens < 0:
        report.fail(f"negative tokens: {tokens}")
    report.oversold = max(0, held + confirmed - initial)
    # Postgres first, Redis second: Redis never forgets a reservation record by itself, so
    # an id in this Postgres snapshot but not in the later Redis one is truly lost there,
    # even while buyers keep buying.
    pg_records = await _postgres_records(sales, sale_id)
    units, per_buyer, records = await _records(sales, sale_id, count)
    if units["held"] != held or units["confirmed"] != confirmed:
        report.fail(f"reservation records say held {units['held']}, confirmed "
                    f"{units['confirmed']}; counters say held {held}, confirmed {confirmed}")
    buyers: Counter = Counter()
    for keys in all_keys(sale_id, count):  # a buyer has units in one bucket only
        buyers.update(units_by_buyer(await sales.redis.hgetall(keys.buyers)))
    if dict(+buyers) != dict(+per_buyer):
        report.fail("per-buyer counts disagree with the reservation records")
    limit = sale["per_user_limit"]
    over = [u for u, q in per_buyer.items() if q > limit]
    if over:
        report.fail(f"{len(over)} buyers over the limit of {limit}: {sorted(over)[:5]}")

    # Postgres: only meaningful once every event is applied.
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        report.lag = (await stream_lag(sales.redis, sale_id, count)).pending
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
    await _settle(sales, sale_id, records, pg_records)
    compared = report.reservations = compare_reservations(records, pg_records)
    if compared["lost_in_redis"]:
        report.fail(f"{compared['lost_in_redis']} reservations Postgres knows are missing from "
                    f"Redis (lost writes?), e.g. {compared['lost_in_redis_ids']}; "
                    "see `flashsale sale recover --force`")
    if compared["unseen_by_postgres"]:
        report.fail(f"{compared['unseen_by_postgres']} reservations in Redis never reached "
                    f"Postgres, e.g. {compared['unseen_by_postgres_ids']}")
    if compared["differ"]:
        report.fail(f"{compared['differ']} reservations differ in owner, quantity or state "
                    f"between Redis and Postgres, e.g. {compared['differ_examples'][:2]}")
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
