"""Hypothesis, stateful: random joins, looks, purchases, payments, releases and expiries
against one waiting room in real Redis. After every step: passes went out in arrival
order; unused live passes never run ahead of the units left (margin 0), except by the
units that holders who released re-bought with their still-live pass; a pass holder who
buys at once gets a unit unless such re-buys took it; and with nothing left that could
come back, every waiting ticket reads sold_out."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine.admission import Admission
from engine.errors import FlashsaleError, SoldOut
from engine.keys import ACTIVE_SALES, room_keys, sale_keys
from engine.scripts import SCRIPTS
from engine.waiting_room import RoomConfig, WaitingRoom, configure
from tests.conftest import SECRET, TEST_REDIS_URL

SALE = 78
UNITS = 2
USERS = st.integers(min_value=1, max_value=6)


class RoomMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(TEST_REDIS_URL)
        self.admission = Admission(self.redis, batching=False)
        self.room = WaitingRoom(self.redis, secret=SECRET, batching=False)
        self.keys, self.room_keys = sale_keys(SALE), room_keys(SALE)
        self.run(self.redis.delete(*self.keys.all, *self.room_keys.for_scripts))
        self.run(configure(self.redis, SALE, RoomConfig(admission_rate=1000)))
        self.run(SCRIPTS.load_tokens(self.redis, self.keys.for_load, (
            1, "1.00", 0, 0, 1, 600_000, UNITS, UNITS, 0, 0, "test")))
        self.used: set[int] = set()      # users whose pass bought something
        self.holds: dict[str, int] = {}  # live holds -> user
        self.rebuys = 0
        self.keys_used = 0

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.redis.delete(*self.keys.all, *self.room_keys.for_scripts))
        self.run(self.redis.srem(ACTIVE_SALES, SALE))
        self.run(self.redis.aclose())
        self.loop.close()

    @rule(user=USERS)
    def join(self, user):
        ticket = self.run(self.room.join(SALE, user))
        assert ticket.status in ("waiting", "admitted", "sold_out")

    @rule(user=USERS)
    def look_and_buy(self, user):
        try:
            ticket = self.run(self.room.look(SALE, user))
        except FlashsaleError:
            return  # never joined
        if ticket.status != "admitted":
            return
        queue_pass = self.room.pass_for(ticket)
        self.room.signer.check(queue_pass, sale_id=SALE, user_id=user)
        self.keys_used += 1
        try:
            hold = self.run(self.admission.reserve(SALE, user, 1, f"k{self.keys_used}"))
        except SoldOut:
            assert user in self.used or self.rebuys, "a fresh pass holder found no unit"
            return
        except FlashsaleError:
            return  # already holds its one unit
        if user in self.used:
            self.rebuys += 1
        self.used.add(user)
        self.holds[hold.reservation_id] = user
        self.run(self.room.pass_used(SALE, user))

    @rule(data=st.data())
    def pay(self, data):
        if self.holds:
            rid = data.draw(st.sampled_from(sorted(self.holds)))
            self.run(self.admission.confirm(rid, user_id=self.holds.pop(rid), order_id=1))

    @rule(data=st.data(), expire=st.booleans())
    def give_back(self, data, expire):
        """The holder releases, or the hold expires (the sweeper's work)."""
        if self.holds:
            rid = data.draw(st.sampled_from(sorted(self.holds)))
            user = self.holds.pop(rid)
            if expire:
                self.run(self.redis.zadd(self.keys.holds, {rid: 0}))
                self.run(self.admission.expire_due(SALE))
            else:
                self.run(self.admission.release(rid, user_id=user))

    @invariant()
    def passes_follow_the_stock_and_the_line(self):
        tokens = int(self.run(self.redis.hget(self.keys.meta, "tokens")))
        held = int(self.run(self.redis.hget(self.keys.meta, "held")))
        fresh = self.run(self.redis.zcard(self.room_keys.fresh))
        assert fresh <= tokens + self.rebuys, (fresh, tokens, self.rebuys)
        waiting = self.run(self.redis.zrange(self.room_keys.waiting, 0, -1, withscores=True))
        admitted = self.run(self.redis.zrange(self.room_keys.passes, 0, -1))
        arrivals = self.run(self.redis.hgetall(self.room_keys.tickets))
        if waiting and admitted:
            first_waiting = min(score for _, score in waiting)
            assert all(int(arrivals[u].split(b":")[0]) < first_waiting for u in admitted)
        if tokens == 0 and held == 0 and arrivals:
            for user in arrivals:  # everyone, waiting or not, learns it at once
                assert self.run(self.room.look(SALE, int(user))).status == "sold_out"


TestWaitingRoom = RoomMachine.TestCase
TestWaitingRoom.settings = settings(max_examples=40, stateful_step_count=50, deadline=None,
                                    suppress_health_check=[HealthCheck.function_scoped_fixture])
