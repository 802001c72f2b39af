"""Each Lua script's cases, through engine.admission against real Redis and Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine.admission import Admission
from engine.errors import (
    Conflict,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    PurchaseLimitExceeded,
    RateLimited,
    ReservationExpired,
    SaleNotActive,
    SoldOut,
    ValidationFailed,
)
from engine.keys import ACTIVE_SALES, sale_keys


@pytest.fixture(params=[True, False], ids=["batched", "direct"])
async def admission(request, redis) -> Admission:
    adm = Admission(redis, batching=request.param)
    yield adm
    await adm.close()


async def books(sales, sale_id: int) -> dict:
    c = await sales.counts(sale_id)
    assert c["initial"] == c["tokens"] + c["held"] + c["confirmed"] + c["in_transit"], c
    assert not c["buckets_missing"] and not c["buckets_unbalanced"], c
    return {k: c[k] for k in ("initial", "tokens", "held", "confirmed", "live_holds")}


async def test_create_sale_moves_stock_and_loads_tokens(sales, product_factory, pool, redis):
    product = await product_factory(stock=100)
    sale = await sales.create(product_id=product, quantity=30, price=Decimal("9.99"),
                              per_user_limit=2)
    assert sale["status"] == "ready"
    assert await pool.fetchval("SELECT available_qty FROM inventory WHERE product_id = $1",
                               product) == 70
    assert await books(sales, sale["sale_id"]) == {
        "initial": 30, "tokens": 30, "held": 0, "confirmed": 0, "live_holds": 0}
    assert await redis.sismember(ACTIVE_SALES, sale["sale_id"])
    with pytest.raises(InsufficientStock):
        await sales.create(product_id=product, quantity=71, price=Decimal("1.00"))
    with pytest.raises(NotFound):
        await sales.create(product_id=999_999, quantity=1, price=Decimal("1.00"))


async def test_load_twice_is_refused_and_a_crash_is_finished(sales, product_factory, pool,
                                                             redis):
    product = await product_factory(stock=10)
    sale = await sales.create(product_id=product, quantity=10, price=Decimal("1.00"))
    with pytest.raises(Conflict):
        await sales.load_tokens(sale["sale_id"])
    assert await redis.hget(sale_keys(sale["sale_id"]).meta, "tokens") == b"10"
    # A crash after the Postgres transaction, before the tokens: status stays 'loading'.
    sale_id = await pool.fetchval(
        "INSERT INTO flash_sales (product_id, quantity, price, status)"
        " VALUES ($1, 5, 1.00, 'loading') RETURNING sale_id", product)
    assert await sales.load_tokens(sale_id) == 5
    # A crash after the tokens, before 'ready': finishing does not load again.
    await pool.execute("UPDATE flash_sales SET status = 'loading' WHERE sale_id = $1", sale_id)
    await redis.hincrby(sale_keys(sale_id).meta, "tokens", -1)  # one sold meanwhile
    assert await sales.load_tokens(sale_id) == 0
    assert await redis.hget(sale_keys(sale_id).meta, "tokens") == b"4"
    assert await pool.fetchval("SELECT status FROM flash_sales WHERE sale_id = $1",
                               sale_id) == "ready"


async def test_a_sale_id_held_in_redis_by_another_database_is_refused(
        sales, product_factory, pool, redis):
    product = await product_factory(stock=10)
    sale = await sales.create(product_id=product, quantity=2, price=Decimal("1.00"))
    # The database is recreated (ids start again) while Redis keeps the old sale's keys.
    await pool.execute("TRUNCATE flash_sales CASCADE")
    await pool.execute("ALTER SEQUENCE flash_sales_sale_id_seq RESTART")
    with pytest.raises(Conflict, match="different sale"):
        await sales.create(product_id=product, quantity=3, price=Decimal("1.00"))
    assert await redis.hget(sale_keys(sale["sale_id"]).meta, "tokens") == b"2"  # untouched


async def test_reserve_happy_replay_limit_sold_out(admission, sales, product_factory, redis):
    product = await product_factory(stock=3)
    sale = (await sales.create(product_id=product, quantity=3, price=Decimal("5.00"),
                               per_user_limit=2))["sale_id"]
    hold = await admission.reserve(sale, 1, 2, "k1")
    assert hold.status == "held" and hold.quantity == 2 and not hold.replayed
    assert hold.reservation_id.startswith(f"{sale}-")
    again = await admission.reserve(sale, 1, 2, "k1")
    assert again.replayed and again.reservation_id == hold.reservation_id
    assert again.expires_ms == hold.expires_ms
    with pytest.raises(IdempotencyKeyReused):
        await admission.reserve(sale, 1, 1, "k1")
    with pytest.raises(PurchaseLimitExceeded):  # counted across requests, not per request
        await admission.reserve(sale, 1, 1, "k2")
    await admission.reserve(sale, 2, 1, "k1")
    with pytest.raises(SoldOut):
        await admission.reserve(sale, 3, 1, "k1")
    # A buyer at their limit on an empty sale is told it is sold out, by the script as by
    # the sold-out flag (a fresh worker has no flag up): the answer does not depend on
    # whether the flag's message has arrived.
    fresh = Admission(redis, batching=False)
    try:
        with pytest.raises(SoldOut):
            await fresh.reserve(sale, 1, 1, "k3")
    finally:
        await fresh.close()
    assert await books(sales, sale) == {"initial": 3, "tokens": 0, "held": 3, "confirmed": 0,
                                        "live_holds": 2}
    with pytest.raises(NotFound):
        await admission.reserve(999_999, 1, 1, "k")


async def test_sale_window(admission, sales, product_factory):
    product = await product_factory(stock=10)
    now = datetime.now(UTC)
    later = (await sales.create(product_id=product, quantity=1, price=Decimal("1.00"),
                                starts_at=now + timedelta(hours=1)))["sale_id"]
    with pytest.raises(SaleNotActive, match="scheduled"):
        await admission.reserve(later, 1, 1, "k")
    short = (await sales.create(product_id=product, quantity=1, price=Decimal("1.00"),
                                starts_at=now - timedelta(seconds=5),
                                ends_at=now + timedelta(milliseconds=300)))["sale_id"]
    await asyncio.sleep(0.4)
    with pytest.raises(SaleNotActive, match="ended"):
        await admission.reserve(short, 1, 1, "k")
    assert (await sales.view(later)).status == "scheduled"
    assert (await sales.view(short)).status == "ended"


async def test_release_twice_and_confirm(admission, sales, product_factory):
    product = await product_factory(stock=5)
    sale = (await sales.create(product_id=product, quantity=2, price=Decimal("1.00"),
                               per_user_limit=2))["sale_id"]
    hold = await admission.reserve(sale, 7, 1, "a")
    with pytest.raises(NotFound):  # another user's reservation does not exist for them
        await admission.release(hold.reservation_id, user_id=8)
    first = await admission.release(hold.reservation_id, user_id=7)
    second = await admission.release(hold.reservation_id, user_id=7)
    assert first.status == second.status == "released"
    assert (await books(sales, sale))["tokens"] == 2
    with pytest.raises(InvalidTransition):
        await admission.confirm(hold.reservation_id, user_id=7, order_id=1)
    # Released units count no more against the buyer's limit.
    other = await admission.reserve(sale, 7, 2, "b")
    done = await admission.confirm(other.reservation_id, user_id=7, order_id=42)
    assert done.status == "confirmed" and done.order_id == 42
    again = await admission.confirm(other.reservation_id, user_id=7, order_id=42)
    assert again.status == "confirmed"  # idempotent for the same order
    with pytest.raises(Conflict):
        await admission.confirm(other.reservation_id, user_id=7, order_id=43)
    with pytest.raises(InvalidTransition):  # a sold unit leaves only through its order
        await admission.release(other.reservation_id, user_id=7)
    assert await books(sales, sale) == {"initial": 2, "tokens": 0, "held": 0, "confirmed": 2,
                                        "live_holds": 0}
    got = await admission.get(other.reservation_id)
    assert got.status == "confirmed" and got.order_id == 42 and got.user_id == 7
    cancelled = await admission.release(other.reservation_id, user_id=None,
                                        include_confirmed=True, reason="order_cancelled")
    assert cancelled.status == "released"
    assert (await books(sales, sale))["tokens"] == 2


async def test_confirm_after_expiry_and_sweeper(admission, sales, product_factory, redis):
    product = await product_factory(stock=5)
    sale = (await sales.create(product_id=product, quantity=2, price=Decimal("1.00"),
                               hold_seconds=1))["sale_id"]
    hold = await admission.reserve(sale, 1, 1, "a")
    await asyncio.sleep(1.1)
    assert (await admission.get(hold.reservation_id)).status == "expired"
    with pytest.raises(ReservationExpired):
        await admission.confirm(hold.reservation_id, user_id=1, order_id=5)
    assert await admission.expire_due(sale) == (1, 1, 0)
    assert await admission.expire_due(sale) == (0, 0, 0)  # idempotent
    assert await books(sales, sale) == {"initial": 2, "tokens": 2, "held": 0, "confirmed": 0,
                                        "live_holds": 0}
    assert (await admission.release(hold.reservation_id, user_id=1)).status == "expired"
    types = [f[b"t"] for _, f in await redis.xrange(sale_keys(sale).events)]
    assert types == [b"loaded", b"reserved", b"expired"]


async def test_noscript_after_script_flush(admission, sales, product_factory, redis):
    product = await product_factory(stock=10)
    sale = (await sales.create(product_id=product, quantity=10, price=Decimal("1.00"),
                               per_user_limit=10))["sale_id"]
    await redis.script_flush()
    hold = await admission.reserve(sale, 1, 1, "after-flush")
    assert hold.status == "held"
    await redis.script_flush()
    # A whole batch meeting NOSCRIPT: every caller still gets its own answer.
    holds = await asyncio.gather(*(admission.reserve(sale, 100 + i, 1, "k") for i in range(5)))
    assert len({h.reservation_id for h in holds}) == 5
    assert (await books(sales, sale))["held"] == 6


async def test_batch_mixes_outcomes_per_caller(redis, sales, product_factory):
    admission = Admission(redis, batching=True)
    product = await product_factory(stock=3)
    sale = (await sales.create(product_id=product, quantity=3, price=Decimal("1.00"),
                               per_user_limit=1))["sale_id"]
    calls = [admission.reserve(sale, 1, 1, "a"), admission.reserve(sale, 1, 1, "b"),
             admission.reserve(sale, 2, 1, "a"), admission.reserve(sale, 3, 1, "a"),
             admission.reserve(sale, 4, 1, "a"), admission.reserve(999_999, 5, 1, "a"),
             admission.reserve(sale, 1, 1, "a")]
    results = await asyncio.gather(*calls, return_exceptions=True)
    kinds = [type(r).__name__ if isinstance(r, Exception) else r.status for r in results]
    assert kinds == ["held", "PurchaseLimitExceeded", "held", "held", "SoldOut", "NotFound",
                     "held"]
    assert results[6].replayed and results[6].reservation_id == results[0].reservation_id
    await admission.close()


async def test_rate_limit_token_bucket(redis, sales, product_factory):
    admission = Admission(redis, rate_limit=5, batching=False)
    product = await product_factory(stock=100)
    sale = (await sales.create(product_id=product, quantity=100, price=Decimal("1.00"),
                               per_user_limit=100))["sale_id"]
    # Burst of twice the rate, then refused with a retry hint.
    for i in range(10):
        await admission.reserve(sale, 1, 1, f"k{i}", client="10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        await admission.reserve(sale, 1, 1, "k-over", client="10.0.0.1")
    assert 0 < refused.value.retry_after <= 0.2
    # Another user from the same address is limited by the address bucket too ...
    with pytest.raises(RateLimited):
        await admission.reserve(sale, 2, 1, "x", client="10.0.0.1")
    # ... while another user elsewhere is not.
    assert (await admission.reserve(sale, 3, 1, "x", client="10.0.0.2")).status == "held"
    await asyncio.sleep(0.25)  # refilled at 5/s
    assert (await admission.reserve(sale, 1, 1, "k-late", client="10.0.0.1")).status == "held"


async def test_with_rate_limiting_a_refusal_writes_nothing_and_takes_no_token(
        redis, sales, product_factory):
    """Only an admission takes a rate-limit token: any number of refusals and replays, in
    a generated order, leave every key of the sale as it was and are never throttled."""
    import random

    admission = Admission(redis, rate_limit=5, batching=False)  # burst of 10
    product = await product_factory(stock=2)
    sale = (await sales.create(product_id=product, quantity=2, price=Decimal("1.00"),
                               per_user_limit=1))["sale_id"]
    held = [await admission.reserve(sale, u, 1, f"k{u}", client="10.0.0.9") for u in (1, 2)]
    keys = sale_keys(sale)

    async def state():
        return (await redis.hgetall(keys.meta), await redis.hgetall(keys.buyers),
                await redis.hgetall(keys.res), await redis.zrange(keys.holds, 0, -1),
                await redis.xlen(keys.events))

    before = await state()
    rng = random.Random()
    attempts = {
        "limit": lambda: admission.reserve(sale, 1, 1, f"again{rng.random()}",
                                           client="10.0.0.9"),
        "replay": lambda: admission.reserve(sale, 2, 1, "k2", client="10.0.0.9"),
        "sold_out": lambda: admission.reserve(sale, rng.randrange(3, 10**6), 1, "k",
                                              client="10.0.0.9"),
        "bad_quantity": lambda: admission.reserve(sale, rng.randrange(3, 10**6), 2, "k",
                                                  client="10.0.0.9")}
    for kind in rng.choices(list(attempts), k=60):
        try:
            hold = await attempts[kind]()
            assert kind == "replay" and hold.reservation_id == held[1].reservation_id
        except RateLimited:
            pytest.fail(f"a {kind} refusal was throttled: refusals took rate-limit tokens")
        except (PurchaseLimitExceeded, SoldOut, ValidationFailed):
            assert kind != "replay"
    assert await state() == before
