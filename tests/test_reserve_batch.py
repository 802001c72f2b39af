"""reserve.lua deciding N attempts in one run (engine/coalesce.py) is the same as running
them one by one in the same order through the one-attempt script of before batching
(benchmarks/baseline/reserve_lean.lua, the oracle). Hypothesis draws batches (the same
user or key twice, quantities outside the limit, tiny stock, the rate limit on or off,
replays of earlier holds) and compares every answer and the sale's keys afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from engine.admission import Admission
from engine.coalesce import Batch
from engine.errors import FlashsaleError
from engine.keys import sale_keys
from engine.scripts import PRELUDE, SCRIPTS, Script
from tests.conftest import TEST_REDIS_URL

BATCHED, ALONE = 881, 882
# The oracle: the one-attempt reserve.lua of before batching (its ARGV: sale_id, user_id,
# quantity, key, rate, client, channel; one answer).
ONE = Script("reserve_lean", "\n".join([PRELUDE, (
    Path(__file__).resolve().parents[1] / "benchmarks" / "baseline" / "reserve_lean.lua"
).read_text(encoding="utf-8")]))

ATTEMPT = st.tuples(st.integers(1, 4),  # user
                    st.integers(0, 3),  # quantity (0, or above the limit: bad_quantity)
                    st.sampled_from(["a", "b"]),  # idempotency key
                    st.sampled_from(["10.0.0.1", "10.0.0.2"]))  # client address


def _n(rid: bytes) -> int:
    return int(rid.rsplit(b"-", 1)[1])


async def _load(redis: aioredis.Redis, sale: int, stock: int, limit: int) -> None:
    keys = sale_keys(sale)
    await redis.delete(*keys.all)
    await SCRIPTS.load_tokens(redis, keys.for_load, (
        1, "1.00", 0, 0, limit, 600_000, stock, stock, 0, 0, "test"))


def _args(sale: int, rate: int, attempts) -> list:
    args: list = [sale, rate, ""]
    for user, qty, key, address in attempts:
        args += [user, qty, key, address]
    return args


async def _state(redis: aioredis.Redis, sale: int) -> tuple[dict, list]:
    """The sale's keys with reservation ids replaced by their rank (ids differ per sale and
    per clock, their order does not), and the rank map."""
    keys = sale_keys(sale)
    res = await redis.hgetall(keys.res)
    rank = {rid: i for i, rid in enumerate(sorted(res, key=_n))}
    meta = await redis.hmget(keys.meta, "tokens", "held")
    buyers = {}
    for field, value in (await redis.hgetall(keys.buyers)).items():
        if field.startswith(b"k:"):
            buyers[field] = rank[value]
        elif field[:2] in (b"r:", b"a:"):  # a bucket: its level in whole tokens
            buyers[field] = round(float(value.split(b":")[0]) / 1000)
        else:
            buyers[field] = value
    holds = {rank[rid]: exp for rid, exp in await redis.zrange(keys.holds, 0, -1,
                                                                withscores=True)}
    records = {rank[rid]: rec.split(b":")[:3] for rid, rec in res.items()}
    events = [(f[b"t"], rank.get(f.get(b"r")), f.get(b"u"), f.get(b"q"), f.get(b"k"))
              for _, f in await redis.xrange(keys.events)]
    return {"meta": meta, "buyers": buyers, "holds": sorted(holds), "records": records,
            "events": events}, rank


def _answer(answer: list, rank: dict) -> tuple:
    tag = answer[0]
    if tag == b"ok":  # expires_ms follows the clock
        return (tag, rank[answer[1]], answer[2], answer[4], answer[5])
    if tag == b"replay":
        return (tag, rank[answer[1]], answer[2], answer[4])
    if tag == b"rate_limited":  # retry_after follows the clock
        return (tag,)
    return tuple(answer)


async def _compare(earlier, batch, stock: int, limit: int, rate: int) -> None:
    redis = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        await SCRIPTS.reserve.load(redis)
        await ONE.load(redis)
        for sale in (BATCHED, ALONE):
            await _load(redis, sale, stock, limit)
            for user, qty, key, address in earlier:  # holds to replay, buckets run low
                await ONE(redis, sale_keys(sale).for_reserve,
                          (sale, user, qty, key, rate, address, ""))
        together = await SCRIPTS.reserve(redis, sale_keys(BATCHED).for_reserve,
                                         _args(BATCHED, rate, batch))
        pipe = redis.pipeline(transaction=False)
        for user, qty, key, address in batch:  # one by one, in the same order
            pipe.evalsha(ONE.sha, 5, *sale_keys(ALONE).for_reserve,
                         ALONE, user, qty, key, rate, address, "")
        alone = await pipe.execute()
        assert len(together) == len(batch)
        state_b, rank_b = await _state(redis, BATCHED)
        state_a, rank_a = await _state(redis, ALONE)
        assert [_answer(a, rank_b) for a in together] == [_answer(a, rank_a) for a in alone]
        assert state_b == state_a
    finally:
        await redis.delete(*sale_keys(BATCHED).all, *sale_keys(ALONE).all)
        await redis.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(earlier=st.lists(ATTEMPT, max_size=4), batch=st.lists(ATTEMPT, min_size=1, max_size=24),
       stock=st.integers(0, 6), limit=st.integers(1, 3), rate=st.sampled_from([0, 1]))
def test_a_batch_decides_as_its_attempts_one_by_one(earlier, batch, stock, limit, rate):
    asyncio.run(_compare(earlier, batch, stock, limit, rate))


def _count_evalsha(admission: Admission) -> list[int]:
    """How many script runs each write of the admission's batcher carries."""
    batcher = admission._batcher
    writes: list[int] = []
    original = batcher._flush

    def flush() -> None:
        transport = batcher._transport
        if transport is not None and not hasattr(transport, "_counted"):
            write = transport.write

            def counted(data: bytes) -> None:
                writes.append(data.count(b"EVALSHA"))
                write(data)
            transport.write, transport._counted = counted, True
        original()
    batcher._flush = flush
    return writes


async def test_one_turn_of_attempts_is_one_script_run_per_64(redis):
    await _load(redis, BATCHED, 100, 1)
    await SCRIPTS.load_all(redis)
    admission = Admission(redis)
    try:
        await admission.reserve(BATCHED, 999, 1, "warm")  # connected
        writes = _count_evalsha(admission)
        answers = await asyncio.gather(*(admission.reserve(BATCHED, u, 1, "k")
                                         for u in range(1, 131)), return_exceptions=True)
        assert writes == [3]  # 64 + 64 + 2 attempts
        held = [a for a in answers if not isinstance(a, BaseException)]
        assert len(held) == 99 and len({h.reservation_id for h in held}) == 99
        assert all(a.code == "sold_out" for a in answers if isinstance(a, FlashsaleError))
    finally:
        await admission.close()


async def test_an_error_of_the_whole_run_reaches_every_caller(redis):
    await redis.set(sale_keys(BATCHED).meta, "not a hash")
    admission = Admission(redis)
    try:
        answers = await asyncio.gather(*(admission.reserve(BATCHED, u, 1, "k")
                                         for u in range(1, 11)), return_exceptions=True)
        assert all(isinstance(a, ResponseError) and "WRONGTYPE" in str(a) for a in answers)
        await redis.delete(sale_keys(BATCHED).meta)
        await _load(redis, BATCHED, 3, 1)
        assert (await admission.reserve(BATCHED, 1, 1, "k")).status == "held"
    finally:
        await admission.close()


@pytest.mark.parametrize("cap", [1, 5])
async def test_the_cap_bounds_each_run(redis, cap):
    await _load(redis, BATCHED, 50, 1)
    await SCRIPTS.load_all(redis)
    admission = Admission(redis)
    admission.scripts = type(SCRIPTS)()
    admission.scripts.reserve.batch = Batch(3, 4, cap)
    try:
        await admission.reserve(BATCHED, 999, 1, "warm")
        writes = _count_evalsha(admission)
        await asyncio.gather(*(admission.reserve(BATCHED, u, 1, "k") for u in range(1, 21)))
        assert writes == [-(-20 // cap)]
    finally:
        await admission.close()
