"""Hot-product buckets on a single Redis (engine/buckets.py): routing by home bucket and by
reservation id, the exact per-user limit and replays across buckets, stealing before
sold_out, transfers that survive a crash between their steps (a Hypothesis state machine),
and a bucketed sale through Postgres: reconciler, audit, recover, the public view, the
API's and the CLI's validation. tests/test_buckets_cluster.py runs the gate on the cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from engine import metrics
from engine.admission import Admission
from engine.buckets import all_keys, complete_moves, home_bucket, move
from engine.errors import (
    Conflict,
    FlashsaleError,
    IdempotencyKeyReused,
    PurchaseLimitExceeded,
    SoldOut,
)
from engine.keys import ACTIVE_SALES, bucket_of_reservation, sale_keys
from engine.scripts import SCRIPTS
from reconciler.audit import audit_sale
from reconciler.board import sale_board
from reconciler.recovery import recover_sale
from tests.buckets_support import bucket_report, load_buckets, three_hundred_buyers
from tests.conftest import TEST_REDIS_URL, assert_error, create_product, create_sale
from tests.reconciler_proc import ReconcilerProcess, new_sale, wait_drained
from tests.test_waiting_room import (  # noqa: F401 (gateways: a fixture)
    arrival,
    buyer_headers,
    gateways,
    join_all,
    look_all,
    reserve,
)


async def test_each_buyer_has_a_home_bucket_and_ids_name_their_bucket(redis):
    sale = 61
    await load_buckets(redis, sale, 9, 3, limit=2)
    adm = Admission(redis)
    try:
        holds = {u: await adm.reserve(sale, u, 1, "k") for u in (3, 4, 5)}
        for user, hold in holds.items():
            assert bucket_of_reservation(hold.reservation_id) == (sale, user % 3)
            assert hold.reservation_id.startswith(
                f"{sale}-" if user % 3 == 0 else f"{sale}-{user % 3}-")
        # Replays and the limit are exact: all of a buyer's holds live in one bucket.
        assert (await adm.reserve(sale, 4, 1, "k")).reservation_id == holds[4].reservation_id
        with pytest.raises(IdempotencyKeyReused):
            await adm.reserve(sale, 4, 2, "k")
        await adm.reserve(sale, 4, 1, "k2")
        with pytest.raises(PurchaseLimitExceeded):
            await adm.reserve(sale, 4, 1, "k3")
        # Release, confirm, read and expiry go to the bucket the id names.
        assert (await adm.release(holds[4].reservation_id, user_id=4)).status == "released"
        assert (await adm.confirm(holds[5].reservation_id, user_id=5, order_id=9)).status \
            == "confirmed"
        assert (await adm.get(holds[5].reservation_id)).order_id == 9
        keys = sale_keys(sale, 0)
        rid = holds[3].reservation_id
        await redis.zadd(keys.holds, {rid: 1})
        await redis.hset(keys.res, rid, "3:1:h:1:")
        assert await adm.expire_due(sale, bucket=0) == (1, 1, 0)
        report = await bucket_report(redis, sale, 3)
        assert (report["held"], report["confirmed"], report["tokens"]) == (1, 1, 7)
        assert report["per_user"] == {4: 1, 5: 1}
    finally:
        await adm.close()


async def test_sold_out_only_when_every_bucket_is_empty(redis):
    """Buyers all homed in bucket 0, one after another: every unit of the three buckets
    is sold to them (stolen from the others) before the first sold_out."""
    sale = 62
    await load_buckets(redis, sale, 30, 3, limit=1)
    adm = Admission(redis)
    await adm.start()
    assert await adm.refusals.wait_listening()
    try:
        users = [3 * i for i in range(1, 41)]
        assert {home_bucket(u, 3) for u in users} == {0}
        sold = 0
        for user in users:
            try:
                await adm.reserve(sale, user, 1, "k")
                sold += 1
            except SoldOut:
                report = await bucket_report(redis, sale, 3)
                assert report["tokens"] == 0 and report["in_transit"] == 0, report
                break
        assert sold == 30
        assert adm.steals >= 2
        assert metrics.BUCKET_STEALS.labels("yes")._value.get() >= 2
        # Now every bucket is flagged: refused without Redis.
        with pytest.raises(SoldOut):
            await adm.reserve(sale, 1, 1, "k")
        assert all((sale, b) in adm.refusals._sold_out for b in range(3))
    finally:
        await adm.close()


async def test_three_hundred_buyers_over_three_buckets(redis):
    sale = 63
    await load_buckets(redis, sale, 150, 3, limit=2)
    workers = [Admission(redis) for _ in range(3)]
    for w in workers:
        await w.start()
    try:
        results = await three_hundred_buyers(workers, sale)
    finally:
        for w in workers:
            await w.close()
    ids = [rid for got in results for rid in got]
    assert len(ids) == len(set(ids)) == 150
    assert max(len(got) for got in results) <= 2
    report = await bucket_report(redis, sale, 3)
    assert report["tokens"] == 0 and report["held"] == 150 and report["in_transit"] == 0
    assert max(report["per_user"].values()) <= 2
    assert {bucket_of_reservation(rid)[1] for rid in ids} == {0, 1}  # homes of BUYERS
    assert sum(w.steals for w in workers) > 0


# -- transfers: a Hypothesis state machine that also crashes between the two steps ---------

SALE = 64
QUANTITY = 12
BUCKETS = 3


class TransferMachine(RuleBasedStateMachine):
    """Reserve, release, expire, move tokens between buckets (whole, or cut after its
    first step as by a crash), steal, and run the rebalancer; after every step
    ``initial = sum over buckets of (tokens + held + confirmed) + in transit``, in
    transit by the counters equals in transit by the records, each bucket balances."""
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        import redis.asyncio as aioredis
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(TEST_REDIS_URL)
        self.admission = Admission(self.redis, batching=False)
        self.run(load_buckets(self.redis, SALE, QUANTITY, BUCKETS, limit=3))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for keys in all_keys(SALE, BUCKETS):
            self.run(self.redis.delete(*keys.all))
        self.run(self.redis.srem(ACTIVE_SALES, SALE))
        self.run(self.redis.aclose())
        self.loop.close()

    async def _direct(self, script, keys, args):
        return await script(self.redis, keys, args)

    @rule(target=holds, user=st.integers(1, 6), qty=st.integers(1, 3))
    def reserve(self, user, qty):
        try:
            return (self.run(self.admission.reserve(SALE, user, qty, f"k{qty}")).reservation_id,
                    user)
        except FlashsaleError:
            return ("none", user)

    @rule(hold=holds)
    def release(self, hold):
        try:
            self.run(self.admission.release(hold[0], user_id=hold[1]))
        except FlashsaleError:
            pass

    @rule(hold=holds)
    def expire(self, hold):
        found = bucket_of_reservation(hold[0])
        if found is None:
            return
        keys = sale_keys(*found)
        if self.run(self.redis.zscore(keys.holds, hold[0])) is not None:
            self.run(self.redis.zadd(keys.holds, {hold[0]: 1}))
            self.run(self.admission.expire_due(SALE, bucket=found[1]))

    @rule(source=st.integers(0, BUCKETS - 1), to=st.integers(0, BUCKETS - 1),
          units=st.integers(1, 8))
    def move_whole(self, source, to, units):
        if source != to:
            self.run(move(self._direct, SALE, source, to, units, channel="",
                          redis=self.redis))

    @rule(source=st.integers(0, BUCKETS - 1), to=st.integers(0, BUCKETS - 1),
          units=st.integers(1, 8), credited=st.booleans())
    def move_cut_by_a_crash(self, source, to, units, credited):
        """The first step only, or both but not the record's removal."""
        if source == to:
            return
        tid, moved = self.run(SCRIPTS.move_out(
            self.redis, sale_keys(SALE, source).for_move_out, (source, to, units)))
        if moved and credited:
            recipient = sale_keys(SALE, to)
            self.run(SCRIPTS.move_in(self.redis, recipient.for_move_in,
                                     (tid, moved, "", recipient.name)))

    @rule()
    def rebalance(self):
        self.run(complete_moves(self.redis, SALE, BUCKETS, channel=""))
        report = self.run(bucket_report(self.redis, SALE, BUCKETS))
        assert report["in_transit"] == report["recorded_in_transit"] == 0

    @invariant()
    def books_balance(self):
        report = self.run(bucket_report(self.redis, SALE, BUCKETS))
        assert report["initial"] == QUANTITY
        assert report["in_transit"] == report["recorded_in_transit"] >= 0
        assert (report["tokens"] + report["held"] + report["confirmed"]
                + report["in_transit"]) == QUANTITY
        assert report["tokens"] >= 0 and max(report["per_user"].values(), default=0) <= 3


TestTransfers = TransferMachine.TestCase
TestTransfers.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


# -- through Postgres ------------------------------------------------------------------------

async def test_a_bucketed_sale_reconciles_audits_and_recovers(settings, redis, pool, sales,
                                                              product_factory, procs):
    sale = await new_sale(sales, product_factory, 60, per_user_limit=2, buckets=3)
    assert (await sales.get(sale))["buckets"] == 3
    assert await redis.hget(sale_keys(sale).meta, "buckets") == b"3"
    reconciler = ReconcilerProcess(settings, "bk").start()
    procs.append(reconciler)
    await reconciler.ready()
    adm = Admission(redis)
    try:
        holds = [await adm.reserve(sale, u, 1, "k") for u in range(1, 46)]
        await adm.release(holds[0].reservation_id, user_id=1)
        await adm.confirm(holds[1].reservation_id, user_id=2, order_id=5)
        view = await sales.view(sale)
        assert view.remaining == 60 - 44 and view.status == "active"
        await wait_drained(redis, pool, sale, rows=45)
        report = await audit_sale(sales, sale, wait_seconds=10)
        assert report.ok, report.problems
        assert report.redis["buckets"] == 3 and report.redis["held"] == 43
        board = await sale_board(sales, sale)
        assert board.remaining == 16 and board.books_balanced and board.buckets == 3
        # Redis loses every bucket: recover puts each reservation back in its bucket.
        for keys in all_keys(sale, 3):
            await redis.delete(*keys.all)
        recovered = await recover_sale(sales, sale)
        assert recovered["buckets"] == 3 and recovered["tokens"] == 16
        replay = await adm.reserve(sale, 5, 1, "k")
        assert replay.replayed and replay.reservation_id == holds[4].reservation_id
        again = await audit_sale(sales, sale, wait_seconds=10)
        assert again.ok, again.problems
        counts = await sales.counts(sale)
        assert (counts["tokens"], counts["held"], counts["confirmed"]) == (16, 43, 1)
        # One master loses its bucket: the audit says so, recover needs --force (the rest
        # of the sale is still in Redis) and then rebuilds every bucket.
        lost = all_keys(sale, 3)[2]
        await redis.delete(*lost.all)
        broken = await audit_sale(sales, sale)
        assert not broken.ok and any("missing" in p for p in broken.problems), broken.problems
        with pytest.raises(Conflict):
            await recover_sale(sales, sale)
        await recover_sale(sales, sale, force=True)
        healed = await audit_sale(sales, sale, wait_seconds=10)
        assert healed.ok, healed.problems
        assert (await adm.reserve(sale, 2, 1, "k")).replayed
    finally:
        await adm.close()


async def test_the_books_check_compares_postgres_at_every_buckets_stream_point(
        settings, redis, pool, sales, product_factory, procs):
    """Postgres keeps its point in every bucket's stream, so the board (and the mismatch
    gauge) sees Postgres disagree on a bucketed sale, and never while events are still in
    flight in one bucket."""
    sale = await new_sale(sales, product_factory, 60, per_user_limit=2, buckets=3)
    adm = Admission(redis)
    reconciler = ReconcilerProcess(settings, "bk-points").start()
    procs.append(reconciler)
    await reconciler.ready()
    try:
        for user in range(1, 31):
            await adm.reserve(sale, user, 1, "k")
        await wait_drained(redis, pool, sale, rows=30)
        points = await pool.fetchval(
            "SELECT bucket_stream_ids FROM flash_sales WHERE sale_id = $1", sale)
        assert set(points) == {"1", "2"}, points
        assert (await sale_board(sales, sale)).books_balanced
        # The reconciler stops; Redis moves on in bucket 2 alone, and Postgres's books are
        # tampered with: behind in one stream, Postgres is not compared (no false alarm).
        assert reconciler.terminate() == 0
        late = next(u for u in range(100, 200) if home_bucket(u, 3) == 2)
        await adm.reserve(sale, late, 1, "k")
        await pool.execute("UPDATE flash_sales SET held_qty = held_qty + 2 WHERE sale_id = $1",
                           sale)
        assert (await sale_board(sales, sale)).books_balanced
        # Caught up in every stream: the 2 units are seen.
        again = ReconcilerProcess(settings, "bk-points-2").start()
        procs.append(again)
        await wait_drained(redis, pool, sale, rows=31)
        board = await sale_board(sales, sale)
        assert not board.books_balanced and board.books_mismatch_units == 2, board
    finally:
        await adm.close()


async def test_the_api_takes_and_validates_buckets(api):
    product = await create_product(api, stock=100)
    base = {"product_id": product["product_id"], "quantity": 10, "price": "9.99"}
    _, sale = await api.call("POST", "/api/v1/admin/sales", headers=api.admin, expect=201,
                             json={**base, "buckets": 3})
    assert sale["buckets"] == 3
    _, public = await api.call("GET", f"/api/v1/sales/{sale['sale_id']}", expect=200)
    assert public["remaining"] == 10  # the sum over the buckets
    for wrong in (0, 65, 11, "3"):
        _, body = await api.call("POST", "/api/v1/admin/sales", headers=api.admin,
                                 expect=422, json={**base, "buckets": wrong})
        assert_error(body, "validation_failed")
        assert "buckets" in str(body)


def test_the_cli_refuses_bad_buckets_in_one_line(settings):
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "sale", "create", "--product-id", "1",
         "--quantity", "5", "--price", "1.00", "--buckets", "9"],
        capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "FLASHSALE_DATABASE_URL": settings.database_url,
             "FLASHSALE_REDIS_URL": settings.redis_url})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--buckets 9" in lines[0] and "quantity" in lines[0], lines


async def test_a_waiting_room_follows_the_stock_of_every_bucket(gateways, pool):  # noqa: F811
    """200 buyers for 30 units over 3 buckets behind a stock-aware room (margin 0): the
    room reads the other buckets' stock just before each step, so passes stay within 1.5x
    the units, follow arrival order, and all 30 units are sold to pass holders."""
    api = gateways[0]
    sale = await create_sale(api, quantity=30, waiting_room=True, admission_rate=20,
                             buckets=3)
    sale_id = sale["sale_id"]
    assert sale["buckets"] == 3
    buyers = await buyer_headers(pool, 200, first=5000)
    tickets = await join_all(gateways, sale_id, buyers)
    # The room opens with a second's worth of passes (20) capped by the stock it sees: more
    # than bucket 0's 10 units means it sees the other buckets too.
    assert 10 < sum(t["status"] == "admitted" for t in tickets) <= 30
    bought: dict[int, str] = {}
    passes_seen: set[int] = set()
    deadline = asyncio.get_running_loop().time() + 60
    while len(bought) < 30:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(bought)} bought"
        looks = await look_all(gateways, sale_id, buyers)
        passes_seen.update(arrival(t) for t in looks if t["status"] == "admitted")
        waiting = [arrival(t) for t in looks if t["status"] == "waiting"]
        if waiting and passes_seen:
            assert max(passes_seen) < min(waiting)
        assert len(passes_seen) <= 30 * 1.5
        holders = [(h, t) for h, t in zip(buyers, looks, strict=True)
                   if t["status"] == "admitted" and arrival(t) not in bought]
        results = await asyncio.gather(*(reserve(gateways[n % 2], sale_id, h, t["pass"])
                                         for n, (h, t) in enumerate(holders)))
        for (_, t), (status, body) in zip(holders, results, strict=True):
            if status == 201:
                bought[arrival(t)] = body["reservation_id"]
            else:  # a pass issued ahead of the stock meets an empty sale
                assert status == 409 and body["error"]["code"] == "sold_out", body
        await asyncio.sleep(0.05)
    assert len(set(bought.values())) == 30
    assert {bucket_of_reservation(rid)[1] for rid in bought.values()} == {0, 1, 2}
    _, public = await api.call("GET", f"/api/v1/sales/{sale_id}", expect=200)
    assert public["remaining"] == 0 and public["status"] == "sold_out"


async def test_entries_set_aside_are_kept_per_bucket(pool):
    """Two buckets' streams (two masters) can give two entries the same stream id: a dead
    letter of each is kept, and a replay of either records nothing twice."""
    from reconciler.deadletter import DeadLetter, park

    letters = [DeadLetter(99, "1700000000000-0", "{}", f"bucket {b}", bucket=b)
               for b in (0, 1)]
    async with pool.acquire() as conn:
        await park(conn, letters)
        await park(conn, letters)
    rows = await pool.fetch("SELECT bucket, error FROM sale_dead_letters WHERE sale_id = 99"
                            " ORDER BY bucket")
    assert [(r["bucket"], r["error"]) for r in rows] == [(0, "bucket 0"), (1, "bucket 1")]
