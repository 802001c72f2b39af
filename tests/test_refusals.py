"""The sold-out short-circuit and the inactive-sale refusal (engine/refusals.py), against
real Redis: few script runs on a sold-out sale, every worker admits again once a token is
returned, and, generated, no worker refuses while the sale has tokens once the messages
are delivered."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from engine.admission import Admission
from engine.errors import FlashsaleError, SaleNotActive, SoldOut
from engine.keys import ACTIVE_SALES, sale_keys
from engine.scripts import SCRIPTS
from tests.conftest import TEST_REDIS_URL

# Redis commands one reserve.lua run costs on a sold-out sale: EVALSHA, then TIME, HMGET,
# HGET idem, HGET buyers, GET tokens (rate limit off).
SOLD_OUT_RUN_COMMANDS = 6


class CountingAdmission(Admission):
    """An admission (one gateway worker) that counts its reserve.lua runs."""

    runs = 0

    async def _run(self, script, keys, args):
        if script is self.scripts.reserve:
            self.runs += 1
        return await super()._run(script, keys, args)


async def started(redis, **kw) -> CountingAdmission:
    adm = CountingAdmission(redis, **kw)
    await adm.start()
    assert await adm.refusals.wait_listening()
    return adm


async def barrier(redis, *workers: Admission) -> None:
    """Wait until every worker's listener has read all messages published before now:
    a marker (sale 0, never a real sale) follows them on the same channel."""
    seen = {id(w): asyncio.Event() for w in workers}
    for w in workers:
        w.refusals.on_return = (lambda sale, e=seen[id(w)]: e.set() if sale == 0 else None)
    await redis.publish(workers[0].channel, "0")
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in seen.values())), 10)
    for w in workers:
        w.refusals.on_return = None


async def test_a_sold_out_sale_costs_few_redis_commands(redis, sales, product_factory):
    product = await product_factory(stock=40)
    sale = (await sales.create(product_id=product, quantity=40,
                               price=Decimal("3.00")))["sale_id"]
    seller, listener = await started(redis), await started(redis)
    late = None
    try:
        # One worker sells every unit; the last admission tells every listening worker.
        await asyncio.gather(*(seller.reserve(sale, u, 1, "k") for u in range(1, 41)))
        assert seller.runs == 40
        late = await started(redis)  # joins after the sell-out: reads it when subscribing
        deadline = time.monotonic() + 10
        while (sale, 0) not in late.refusals._sold_out:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await barrier(redis, seller, listener, late)
        # 3,000 attempts from new buyers, 64 at a time per worker (a busy worker's
        # connections), spread over the three workers.
        users = iter(range(1000, 4000))
        refused = 0
        for _ in range(3000 // 192):
            for worker in (seller, listener, late):
                answers = await asyncio.gather(
                    *(worker.reserve(sale, next(users), 1, "k") for _ in range(64)),
                    return_exceptions=True)
                refused += sum(isinstance(a, SoldOut) for a in answers)
        assert refused == 3000 // 192 * 192
        # No script run at all: refused without Redis from the last admission on.
        assert (seller.runs, listener.runs, late.runs) == (40, 0, 0)
        # A buyer this worker admitted still gets an exact answer (their replay).
        again = await seller.reserve(sale, 1, 1, "k")
        assert again.replayed
    finally:
        for w in (seller, listener, late):
            if w is not None:
                await w.close()


async def test_a_sold_out_answer_raises_the_flag(redis, sales, product_factory):
    """A sell-out this worker did not hear of (its message lost): the first attempts in
    flight ask Redis, then the flag answers."""
    product = await product_factory(stock=1)
    sale = (await sales.create(product_id=product, quantity=1,
                               price=Decimal("3.00")))["sale_id"]
    worker = await started(redis)
    try:
        # Sold through the script without a channel: no message is published.
        await SCRIPTS.reserve(redis, sale_keys(sale).for_reserve, (sale, 0, "", 1, 1, "k", ""))
        answers = await asyncio.gather(*(worker.reserve(sale, u, 1, "k") for u in range(2, 34)),
                                       return_exceptions=True)
        assert all(isinstance(a, SoldOut) for a in answers)
        assert worker.runs == 32  # the wave in flight
        for u in range(100, 400):
            with pytest.raises(SoldOut):
                await worker.reserve(sale, u, 1, "k")
        assert worker.runs == 32
        assert (worker.runs * SOLD_OUT_RUN_COMMANDS) < 300
    finally:
        await worker.close()


@pytest.mark.parametrize("how", ["release", "expire"])
async def test_a_returned_token_is_admitted_again_on_every_worker(how, redis, sales,
                                                                  product_factory):
    product = await product_factory(stock=3)
    sale = (await sales.create(product_id=product, quantity=3, price=Decimal("3.00"),
                               hold_seconds=600))["sale_id"]
    # A long safety-net TTL: only the message can clear the flags within this test.
    workers = [await started(redis, refusal_ttl=600) for _ in range(3)]
    sweeper = Admission(redis, batching=False)
    try:
        holds = [await workers[0].reserve(sale, u, 1, "k") for u in (1, 2, 3)]
        for i, w in enumerate(workers[1:], start=2):
            with pytest.raises(SoldOut):
                await w.reserve(sale, 100 + i, 1, "k")
        runs = [w.runs for w in workers]
        for w in workers:
            with pytest.raises(SoldOut):
                await w.reserve(sale, 200, 1, "k")
        assert [w.runs for w in workers] == runs  # every worker's flag is up

        returned = asyncio.Event()
        workers[2].refusals.on_return = lambda s: returned.set() if s == sale else None
        if how == "release":
            await sweeper.release(holds[0].reservation_id, user_id=1)
        else:  # the hold's time runs out and the sweeper returns it
            keys = sale_keys(sale)
            await redis.zadd(keys.holds, {holds[0].reservation_id: 1})
            await redis.hset(keys.res, holds[0].reservation_id, "1:1:h:1:")
            assert (await sweeper.expire_due(sale))[1] == 1
        await asyncio.wait_for(returned.wait(), 10)
        await barrier(redis, *workers)
        hold = await workers[2].reserve(sale, 300, 1, "k")
        assert hold.status == "held"
        assert workers[2].runs == runs[2] + 1
    finally:
        for w in workers:
            await w.close()


async def test_a_token_returned_while_the_answer_travels_does_not_raise_the_flag(
        redis, sales, product_factory):
    """The pub/sub message can overtake the sold_out answer it follows: that answer must
    not raise the flag."""
    product = await product_factory(stock=1)
    sale = (await sales.create(product_id=product, quantity=1,
                               price=Decimal("3.00")))["sale_id"]
    worker = await started(redis, refusal_ttl=600)
    try:
        sent_at = time.monotonic()
        worker.refusals.tokens_returned(sale)  # arrives after the attempt was sent
        worker.refusals.sold_out(sale, sent_at=sent_at - 1e-3)
        worker.refusals.check(sale, 5)  # no flag
    finally:
        await worker.close()


async def test_inactive_sales_are_refused_without_redis_until_they_open(redis, sales,
                                                                        product_factory):
    product = await product_factory(stock=10)
    now = datetime.now(UTC)
    soon = (await sales.create(product_id=product, quantity=2, price=Decimal("1.00"),
                               starts_at=now + timedelta(seconds=1.5)))["sale_id"]
    ended = (await sales.create(product_id=product, quantity=2, price=Decimal("1.00"),
                                starts_at=now - timedelta(seconds=5),
                                ends_at=now + timedelta(milliseconds=200)))["sale_id"]
    worker = await started(redis, refusal_ttl=60)
    try:
        for _ in range(50):
            with pytest.raises(SaleNotActive, match="scheduled"):
                await worker.reserve(soon, 1, 1, "k")
        assert worker.runs == 1
        # The flag lapses by the start (counted from before the script ran): the sale
        # admits as soon as it opens, without waiting for the 60 s TTL.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                hold = await worker.reserve(soon, 1, 1, "k")
                break
            except SaleNotActive:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
        assert hold.status == "held"
        await asyncio.sleep(0.3)
        runs = worker.runs
        for _ in range(50):
            with pytest.raises(SaleNotActive, match="ended"):
                await worker.reserve(ended, 1, 1, "k")
        assert worker.runs == runs + 1
    finally:
        await worker.close()


async def test_a_resumed_sale_admits_at_once_on_every_worker(redis, sales, product_factory):
    product = await product_factory(stock=5)
    sale = (await sales.create(product_id=product, quantity=5,
                               price=Decimal("1.00")))["sale_id"]
    workers = [await started(redis, refusal_ttl=600) for _ in range(2)]
    try:
        await sales.change_state(sale, "pause")
        for w in workers:
            with pytest.raises(SaleNotActive, match="paused"):
                await w.reserve(sale, 1, 1, "k")
            with pytest.raises(SaleNotActive, match="paused"):
                await w.reserve(sale, 1, 1, "k")
            assert w.runs == 1  # the second refusal came from the flag
        await sales.change_state(sale, "resume")
        await barrier(redis, *workers)
        for i, w in enumerate(workers):
            assert (await w.reserve(sale, 10 + i, 1, "k")).status == "held"
    finally:
        for w in workers:
            await w.close()


async def test_without_the_listener_every_attempt_asks_redis(redis, sales, product_factory):
    product = await product_factory(stock=1)
    sale = (await sales.create(product_id=product, quantity=1,
                               price=Decimal("1.00")))["sale_id"]
    worker = CountingAdmission(redis)  # never started: no messages, so no flags
    try:
        await worker.reserve(sale, 1, 1, "k")
        for u in range(2, 12):
            with pytest.raises(SoldOut):
                await worker.reserve(sale, u, 1, "k")
        assert worker.runs == 11
    finally:
        await worker.close()


# -- generated: no worker refuses a sale that has tokens once the messages are in --------

SALE = 78
INITIAL = 3


class TwoWorkers(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(TEST_REDIS_URL)
        self.keys = sale_keys(SALE)
        self.run(self.redis.delete(*self.keys.all))
        self.run(SCRIPTS.load_tokens(self.redis, self.keys.for_load, (
            1, "1.00", 0, 0, 2, 600_000, INITIAL, INITIAL, 0, 0, "test")))
        self.workers = [self.run(started(self.redis, refusal_ttl=600)) for _ in range(2)]
        self.sweeper = Admission(self.redis, batching=False)
        self.order = 0
        self.keys_used = itertools.count()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for w in self.workers:
            self.run(w.close())
        self.run(self.redis.delete(*self.keys.all))
        self.run(self.redis.srem(ACTIVE_SALES, SALE))
        self.run(self.redis.aclose())
        self.loop.close()

    @rule(target=holds, worker=st.integers(0, 1), users=st.lists(st.integers(1, 6),
                                                                 min_size=1, max_size=6))
    def reserve_together(self, worker, users):
        """Several buyers at once on one worker (one batch, answers in any order)."""
        w = self.workers[worker]

        async def together():
            return await asyncio.gather(
                *(w.reserve(SALE, u, 1, str(next(self.keys_used))) for u in users),
                return_exceptions=True)

        answers = self.run(together())
        for a in answers:
            if not isinstance(a, BaseException):
                return (a.reservation_id, a.user_id)
        return ("none", 0)

    @rule(hold=holds)
    def release(self, hold):
        try:
            self.run(self.sweeper.release(hold[0], user_id=None))
        except FlashsaleError:
            pass

    @rule(hold=holds)
    def confirm_then_cancel(self, hold):
        self.order += 1
        try:
            self.run(self.sweeper.confirm(hold[0], user_id=hold[1], order_id=self.order))
            self.run(self.sweeper.release(hold[0], user_id=None, include_confirmed=True,
                                          reason="order_cancelled"))
        except FlashsaleError:
            pass

    @rule(hold=holds)
    def expire(self, hold):
        raw = self.run(self.redis.hget(self.keys.res, hold[0]))
        if raw is not None and raw.split(b":")[2] == b"h":
            u, q, s, _x, o = raw.split(b":", 4)
            self.run(self.redis.hset(self.keys.res, hold[0], b":".join([u, q, s, b"1", o])))
            self.run(self.redis.zadd(self.keys.holds, {hold[0]: 1}))
        self.run(self.sweeper.expire_due(SALE))

    @invariant()
    def no_flag_while_tokens_are_left(self):
        self.run(barrier(self.redis, *self.workers))
        tokens = int(self.run(self.redis.hget(self.keys.meta, "tokens")))
        for w in self.workers:
            refused = False
            try:
                w.refusals.check(SALE, 10_000)  # a buyer no worker admitted
            except SoldOut:
                refused = True
            assert not (refused and tokens > 0), (tokens, w.refusals._sold_out)


TestTwoWorkers = TwoWorkers.TestCase
TestTwoWorkers.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
