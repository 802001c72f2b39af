"""Hypothesis, stateful: random reserve / release / confirm / expire sequences against real
Redis. After every step the books balance (initial = tokens + held + confirmed), the
counters agree with the reservation records, and no buyer exceeds the limit."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from engine.admission import Admission
from engine.errors import FlashsaleError
from engine.keys import ACTIVE_SALES, sale_keys, units_by_buyer
from engine.scripts import SCRIPTS
from tests.conftest import TEST_REDIS_URL

SALE = 77
INITIAL = 6
LIMIT = 2
USERS = st.integers(min_value=1, max_value=4)


class SaleMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = self.connect()
        self.admission = Admission(self.redis, batching=False)
        self.keys = sale_keys(SALE)
        self.run(self.redis.delete(*self.keys.all))
        self.run(SCRIPTS.load_tokens(self.redis, self.keys.for_load, (
            1, "1.00", 0, 0, LIMIT, 600_000, INITIAL, INITIAL, 0, 0, "test")))
        self.order = 0

    def connect(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(TEST_REDIS_URL)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.redis.delete(*self.keys.all))
        self.run(self.redis.srem(ACTIVE_SALES, SALE))
        self.run(self.redis.aclose())
        self.loop.close()

    @rule(target=holds, user=USERS, qty=st.integers(min_value=1, max_value=3),
          key=st.sampled_from(["a", "b", "c"]))
    def reserve(self, user, qty, key):
        try:
            hold = self.run(self.admission.reserve(SALE, user, qty, key))
            return (hold.reservation_id, user)
        except FlashsaleError:
            return ("none", user)

    @rule(hold=holds, as_owner=st.booleans())
    def release(self, hold, as_owner):
        rid, user = hold
        try:
            self.run(self.admission.release(rid, user_id=user if as_owner else user + 100))
        except FlashsaleError:
            pass

    @rule(hold=holds)
    def confirm(self, hold):
        rid, user = hold
        self.order += 1
        try:
            self.run(self.admission.confirm(rid, user_id=user, order_id=self.order))
        except FlashsaleError:
            pass

    @rule(hold=holds)
    def cancel_order(self, hold):
        try:
            self.run(self.admission.release(hold[0], user_id=None, include_confirmed=True,
                                            reason="order_cancelled"))
        except FlashsaleError:
            pass

    @rule(hold=holds)
    def time_passes(self, hold):
        """The hold's clock runs out (as if its hold time elapsed), then the sweeper runs."""
        rid = hold[0]
        raw = self.run(self.redis.hget(self.keys.res, rid))
        if raw is not None:
            u, q, s, _x, o = raw.split(b":", 4)
            self.run(self.redis.hset(self.keys.res, rid, b":".join([u, q, s, b"1", o])))
            if s == b"h":
                self.run(self.redis.zadd(self.keys.holds, {rid: 1}))
        self.run(self.admission.expire_due(SALE))

    @invariant()
    def books_balance(self):
        meta = self.run(self.redis.hmget(self.keys.meta, "initial", "held", "confirmed"))
        initial, held, confirmed = (int(v) for v in meta)
        tokens = int(self.run(self.redis.hget(self.keys.meta, "tokens")))
        assert initial == tokens + held + confirmed == INITIAL
        assert tokens >= 0
        units: Counter = Counter()
        per_user: Counter = Counter()
        for raw in self.run(self.redis.hgetall(self.keys.res)).values():
            u, q, s, _x, _o = raw.split(b":", 4)
            units[s] += int(q)
            if s in (b"h", b"c"):
                per_user[int(u)] += int(q)
        assert units[b"h"] == held and units[b"c"] == confirmed
        assert max(per_user.values(), default=0) <= LIMIT
        buyers = units_by_buyer(self.run(self.redis.hgetall(self.keys.buyers)))
        assert buyers == dict(per_user)
        live = self.run(self.redis.zcard(self.keys.holds))
        assert live == sum(1 for v in self.run(self.redis.hgetall(self.keys.res)).values()
                           if v.split(b":")[2] == b"h")


TestSaleInvariant = SaleMachine.TestCase
TestSaleInvariant.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
