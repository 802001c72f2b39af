"""`flashsale sale parked`: what the reconciler set aside, retried once its cause is fixed
or resolved by hand, against a real reconciler process, Redis and Postgres. The audit
and the dead-letter gauge count only what is still open; two retries at once apply each
letter once; rows are kept as the record."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from engine.errors import NotFound, ValidationFailed
from engine.events import SaleEvent
from engine.keys import sale_keys
from reconciler import parked as store
from reconciler.apply import apply_batch
from reconciler.audit import audit
from reconciler.report import parked
from tests.reconciler_proc import ReconcilerProcess, free_port, new_sale, wait_drained
from tests.test_integrity import _cli

REFUSED_BUYER = 999_999  # a constraint added for the test refuses this buyer's rows


async def _books(pool, sale_id: int) -> tuple[int, int]:
    row = await pool.fetchrow("SELECT held_qty, confirmed_qty FROM flash_sales"
                              " WHERE sale_id = $1", sale_id)
    return row["held_qty"], row["confirmed_qty"]


async def _gauge_reaches(port: int, value: int) -> None:
    """The reconciler's flashsale_dead_letters_parked shows ``value`` (open ones only)."""
    line = f"flashsale_dead_letters_parked {float(value)}"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                if line in (await resp.text()).splitlines():
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"no {line!r}")


async def _parked_sale(settings, sales, product_factory, admission, pool, redis, procs
                       ) -> tuple[int, int]:
    """A sale whose reconciler (metrics on the port returned) parked 3 holds Postgres
    refused (a CHECK constraint added by mistake) and one entry nobody can read, beside 10
    holds that went through."""
    sale = await new_sale(sales, product_factory, 40, per_user_limit=3)
    await pool.execute(f"ALTER TABLE sale_reservations ADD CONSTRAINT no_buyer_{sale}"
                       f" CHECK (user_id <> {REFUSED_BUYER}) NOT VALID")
    port = free_port()
    procs.append(ReconcilerProcess(settings, f"parked-{sale}", metrics_port=port).start())
    await asyncio.gather(*(admission.reserve(sale, i, 1, f"k{i}") for i in range(10)))
    for i in range(3):
        await admission.reserve(sale, REFUSED_BUYER, 1, f"r{i}")
    await redis.xadd(sale_keys(sale).events,
                     {"t": "reserved", "r": f"{sale}-x", "u": "not-a-number", "q": 1})
    await wait_drained(redis, pool, sale, rows=10, timeout=20)
    for _ in range(100):
        if len(await store.parked_items(pool, sale)) == 4:
            break
        await asyncio.sleep(0.1)
    return sale, port


async def test_fixed_cause_retry_applies_each_letter_once_and_the_audit_passes(
        settings, sales, product_factory, admission, pool, redis, procs) -> None:
    sale, port = await _parked_sale(settings, sales, product_factory, admission, pool,
                                     redis, procs)
    items = await store.parked_items(pool, sale)
    letters = [i for i in items if i.kind == "dead_letter"]
    assert len(letters) == 4 and sum(i.retryable for i in letters) == 3, items
    assert await _books(pool, sale) == (10, 0)
    report = (await audit(sales, sale, wait_seconds=0))[0]
    assert not report.ok and report.dead_letters == 4
    await _gauge_reaches(port, 4)

    # Still refused: the retry keeps every row open, with Postgres's error, exit 1.
    cli = await asyncio.to_thread(_cli, settings, "sale", "parked", str(sale), "--retry",
                                  "--json")
    assert cli.returncode == 1, cli.stderr
    out = json.loads(cli.stdout)
    assert out["applied"] == [] and len(out["refused"]) == 3 and len(out["skipped"]) == 1
    assert all("CheckViolation" in e for e in out["refused"].values())

    # The cause fixed, two operators retry at the same moment: each letter applied once.
    await pool.execute(f"ALTER TABLE sale_reservations DROP CONSTRAINT no_buyer_{sale}")
    first, second = await asyncio.gather(store.retry_dead_letters(pool, sale),
                                         store.retry_dead_letters(pool, sale))
    applied = first.applied + second.applied
    assert sorted(applied) == sorted(i.ref for i in letters if i.retryable), (first, second)
    assert await _books(pool, sale) == (13, 0)
    assert await pool.fetchval("SELECT count(*) FROM sale_reservations WHERE sale_id = $1",
                               sale) == 13

    # The unreadable one is resolved by hand, with a reason; then nothing is open.
    unreadable = next(i.ref for i in letters if not i.retryable)
    cli = await asyncio.to_thread(_cli, settings, "sale", "parked", str(sale), "--resolve",
                                  unreadable, "--reason", "injected by the test; no hold")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert f"resolved: {unreadable}" in cli.stdout and "0 dead letters" in cli.stdout
    report = (await audit(sales, sale, wait_seconds=5))[0]
    assert report.ok, report.problems
    assert report.postgres["held"] == 13
    await _gauge_reaches(port, 0)

    # Kept as the record, with what was done.
    kept = await store.parked_items(pool, sale, resolved=True)
    assert len(kept) == 4 and all(i.resolved_at is not None for i in kept)
    assert {i.resolution for i in kept} == {"applied on retry",
                                            "by hand: injected by the test; no hold"}
    listing = await asyncio.to_thread(_cli, settings, "sale", "parked", str(sale), "--all")
    assert listing.returncode == 0 and "resolved" in listing.stdout
    # Resolving again changes nothing.
    assert await store.resolve(pool, sale, [unreadable], "again") == []


async def test_resolve_refuses_what_it_cannot_name(settings, sales, product_factory,
                                                   pool) -> None:
    sale = await new_sale(sales, product_factory, 5)
    with pytest.raises(ValidationFailed):
        await store.resolve(pool, sale, ["x1"], "why")
    with pytest.raises(ValidationFailed):
        await store.resolve(pool, sale, ["d1"], "  ")
    with pytest.raises(NotFound):
        await store.resolve(pool, sale, ["d424242"], "why")
    for args in (["--resolve", "d1"], ["--reason", "why"], ["--retry", "--resolve", "d1",
                                                           "--reason", "x"]):
        cli = await asyncio.to_thread(_cli, settings, "sale", "parked", str(sale), *args)
        assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    cli = await asyncio.to_thread(_cli, settings, "sale", "parked", "987654", "--json")
    assert cli.returncode == 1 and json.loads(cli.stderr)["error"]["code"] == "not_found"
    cli = await asyncio.to_thread(_cli, settings, "sale", "parked", str(sale))
    assert cli.returncode == 0 and "nothing parked" in cli.stdout


async def test_a_conflict_is_listed_and_resolved_by_hand(sales, product_factory,
                                                         pool) -> None:
    sale = await new_sale(sales, product_factory, 5)
    mine = SaleEvent(stream_id="1-1", sale_id=sale, type="reserved", reservation_id=f"{sale}-7",
                     user_id=1, quantity=1, at_ms=1, expires_ms=2, idempotency_key="a")
    theirs = SaleEvent(stream_id="1-2", sale_id=sale, type="reserved",
                       reservation_id=f"{sale}-7", user_id=2, quantity=1, at_ms=1,
                       expires_ms=2, idempotency_key="b")
    async with pool.acquire() as conn, conn.transaction():
        await apply_batch(conn, [mine, theirs])
    [item] = await store.parked_items(pool, sale)
    assert (item.kind, item.retryable) == ("conflict", False)
    assert "for user 2" in item.event and "for user 1" in item.why
    assert (await parked(sales, sale))["conflicts"] == 1
    # A retry leaves a conflict alone: only an operator can say whose the id was.
    assert (await store.retry_dead_letters(pool, sale)).applied == []
    assert await store.resolve(pool, sale, [item.ref], "user 2 refunded") == [item.ref]
    assert (await parked(sales, sale))["conflicts"] == 0
    [kept] = await store.parked_items(pool, sale, resolved=True)
    assert kept.resolution == "by hand: user 2 refunded"
