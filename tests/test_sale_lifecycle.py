"""A sale's life as an operator runs it: the admin sales API (board, list, pause, resume,
end), generated action sequences against a model, pausing under concurrent buyers, and the
books check behind the mismatch gauge."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from engine.admission import Admission
from engine.errors import (
    IdempotencyKeyReused,
    InvalidTransition,
    NotFound,
    SaleNotActive,
    SoldOut,
)
from engine.keys import sale_keys
from reconciler.board import SALE_BOARD_FIELDS, sale_board
from tests.conftest import assert_error, create_sale
from tests.reconciler_proc import ReconcilerProcess, wait_drained

BOARD_FIELDS = {"sale_id", "product_id", "product_name", "price", "status", "initial",
                "remaining", "held", "confirmed", "released", "expired", "starts_at",
                "ends_at", "per_user_limit", "hold_seconds", "reconciler_lag",
                "books_balanced", "books_mismatch_units", "admissions_total", "waiting_room",
                "buckets", "in_transit"}


def test_the_board_has_the_contract_fields() -> None:
    assert set(SALE_BOARD_FIELDS) == BOARD_FIELDS


async def _reserve(api, sale_id: int, buyer: dict) -> tuple[int, dict]:
    return await api.call("POST", f"/api/v1/sales/{sale_id}/reservations",
                          headers=buyer["headers"],
                          json={"quantity": 1, "idempotency_key": uuid.uuid4().hex})


async def test_pause_resume_end_over_http(api) -> None:
    sale = await create_sale(api, quantity=5, per_user_limit=5)
    sid = sale["sale_id"]
    base = f"/api/v1/admin/sales/{sid}"
    buyer = await api.signup()
    status, board = await api.call("GET", base, headers=api.admin)
    assert status == 200 and set(board) == BOARD_FIELDS
    assert board["status"] == "active" and board["initial"] == board["remaining"] == 5
    assert board["price"] == "9.99" and board["product_name"] == "Hot Gadget"
    assert board["books_balanced"] is True and board["books_mismatch_units"] == 0
    assert board["waiting_room"] is None and board["ends_at"] is None
    assert board["starts_at"].endswith("Z")

    status, board = await api.call("POST", f"{base}/pause", headers=api.admin)
    assert status == 200 and board["status"] == "paused"
    status, body = await _reserve(api, sid, buyer)
    assert status == 409
    assert_error(body, "sale_not_active")
    assert body["error"]["details"]["reason"] == "paused"
    _, public = await api.call("GET", f"/api/v1/sales/{sid}")
    assert public["status"] == "paused"
    status, body = await api.call("POST", f"{base}/pause", headers=api.admin)
    assert status == 409
    assert_error(body, "invalid_transition")

    status, board = await api.call("POST", f"{base}/resume", headers=api.admin)
    assert status == 200 and board["status"] == "active"
    status, body = await api.call("POST", f"{base}/resume", headers=api.admin)
    assert status == 409
    assert_error(body, "invalid_transition")
    status, hold = await _reserve(api, sid, buyer)
    assert status == 201

    status, board = await api.call("POST", f"{base}/end", headers=api.admin)
    assert status == 200 and board["status"] == "ended" and board["ends_at"]
    assert board["held"] == 1 and board["remaining"] == 4
    status, body = await _reserve(api, sid, buyer)
    assert status == 409
    assert_error(body, "sale_not_active")
    for action in ("pause", "resume", "end"):
        status, body = await api.call("POST", f"{base}/{action}", headers=api.admin)
        assert status == 409, action
        assert_error(body, "invalid_transition")
        assert body["error"]["details"]["status"] == "ended"


async def test_unknown_sales_and_non_admins_are_refused(api) -> None:
    sale = await create_sale(api, quantity=1)
    customer = await api.signup()
    for method, path in (("GET", "/api/v1/admin/sales/987654"),
                         ("POST", "/api/v1/admin/sales/987654/pause"),
                         ("POST", "/api/v1/admin/sales/987654/end")):
        status, body = await api.call(method, path, headers=api.admin)
        assert status == 404, path
        assert_error(body, "not_found")
    for method, path in (("GET", "/api/v1/admin/sales"),
                         ("GET", f"/api/v1/admin/sales/{sale['sale_id']}"),
                         ("POST", f"/api/v1/admin/sales/{sale['sale_id']}/pause")):
        status, body = await api.call(method, path, headers=customer["headers"])
        assert status == 403, path
        assert_error(body, "forbidden")
    status, body = await api.call("GET", "/api/v1/admin/sales?status=finished",
                                  headers=api.admin)
    assert status == 422
    assert_error(body, "validation_failed")


async def test_list_is_newest_first_and_filters_by_status(api) -> None:
    ids = [(await create_sale(api, quantity=2))["sale_id"] for _ in range(4)]
    await api.call("POST", f"/api/v1/admin/sales/{ids[1]}/pause", headers=api.admin,
                   expect=200)
    await api.call("POST", f"/api/v1/admin/sales/{ids[2]}/end", headers=api.admin, expect=200)
    _, listed = await api.call("GET", "/api/v1/admin/sales", headers=api.admin, expect=200)
    assert [b["sale_id"] for b in listed["items"]] == ids[::-1]
    by_status = {b["sale_id"]: b["status"] for b in listed["items"]}
    assert by_status == {ids[0]: "active", ids[1]: "paused", ids[2]: "ended",
                         ids[3]: "active"}
    for wanted in ("active", "paused", "ended", "sold_out", "scheduled"):
        _, page = await api.call("GET", f"/api/v1/admin/sales?status={wanted}",
                                 headers=api.admin, expect=200)
        assert [b["sale_id"] for b in page["items"]] == [
            s for s in ids[::-1] if by_status[s] == wanted]


# What each action allows, as the contract states it; the model the engine is held to.
ALLOWED = {"pause": {"scheduled", "active", "sold_out"}, "resume": {"paused"},
           "end": {"scheduled", "active", "paused", "sold_out"}}


@hyp_settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.sampled_from(["pause", "resume", "end", "reserve"]),
                        min_size=1, max_size=8),
       scheduled=st.booleans())
async def test_generated_action_sequences_follow_the_model(
        sales, product_factory, redis, actions, scheduled) -> None:
    from datetime import UTC, datetime, timedelta

    product = await product_factory(stock=3)
    starts = datetime.now(UTC) + timedelta(hours=1) if scheduled else None
    sid = (await sales.create(product_id=product, quantity=3, price=Decimal("1.00"),
                              per_user_limit=3, starts_at=starts))["sale_id"]
    admission = Admission(redis, batching=False)
    status, tokens, paused_flag = ("scheduled" if scheduled else "active"), 3, False

    def running() -> str:
        return "scheduled" if scheduled else ("sold_out" if tokens == 0 else "active")
    for n, action in enumerate(actions):
        if action == "reserve":
            if status == "active":
                await admission.reserve(sid, 1, 1, f"k{n}")
                tokens -= 1
                status = "sold_out" if tokens == 0 else "active"
            else:
                with pytest.raises(SoldOut if status == "sold_out" else SaleNotActive):
                    await admission.reserve(sid, 1, 1, f"k{n}")
        elif status in ALLOWED[action]:
            await sales.change_state(sid, action)
            status = {"pause": "paused", "end": "ended"}.get(action) or running()
            paused_flag = {"pause": True, "resume": False}.get(action, paused_flag)
        else:
            with pytest.raises(InvalidTransition):
                await sales.change_state(sid, action)
        assert (await sales.view(sid)).status == status, (n, action)
        board = await sale_board(sales, sid)
        assert board.status == status and board.remaining == tokens
        assert board.books_balanced
    assert ((await sales.get(sid))["paused_at"] is not None) == paused_flag
    with pytest.raises(NotFound):
        await sales.change_state(sid + 1000, "pause")


async def test_pause_under_concurrent_buyers_admits_nothing_after_it(
        sales, product_factory, redis) -> None:
    product = await product_factory(stock=400)
    sid = (await sales.create(product_id=product, quantity=400, price=Decimal("2.00"),
                              per_user_limit=400))["sale_id"]
    admission = Admission(redis)
    paused = asyncio.Event()
    after_pause: list[str] = []

    async def buyer(user: int) -> None:
        for n in range(20):
            sent_after_pause = paused.is_set()
            try:
                hold = await admission.reserve(sid, user, 1, f"{user}-{n}")
            except (SaleNotActive, SoldOut):
                return
            if sent_after_pause:  # sent once the pause had returned: must not be admitted
                after_pause.append(hold.reservation_id)
            await asyncio.sleep(0)

    async def operator() -> None:
        await asyncio.sleep(0.01)
        await sales.change_state(sid, "pause")
        paused.set()

    await asyncio.gather(operator(), *(buyer(u) for u in range(1, 31)))
    await admission.close()
    board = await sale_board(sales, sid)
    assert after_pause == []
    assert board.status == "paused" and board.held + board.remaining == 400
    assert board.books_balanced


async def test_books_mismatch_counts_tampered_tokens(sales, product_factory, redis) -> None:
    product = await product_factory(stock=10)
    sid = (await sales.create(product_id=product, quantity=10, price=Decimal("1.00")))["sale_id"]
    assert (await sale_board(sales, sid)).books_mismatch_units == 0
    await redis.hincrby(sale_keys(sid).meta, "tokens", 3)
    board = await sale_board(sales, sid)
    assert board.books_mismatch_units == 3 and not board.books_balanced
    await redis.hincrby(sale_keys(sid).meta, "tokens", -5)
    assert (await sale_board(sales, sid)).books_mismatch_units == 2


@pytest.mark.slow
async def test_an_ended_sale_returns_its_unsold_units_once_drained(
        settings, sales, product_factory, redis, pool) -> None:
    product = await product_factory(stock=10)
    sid = (await sales.create(product_id=product, quantity=6, price=Decimal("1.00"),
                              per_user_limit=6, hold_seconds=2))["sale_id"]
    admission = Admission(redis, batching=False)
    await admission.reserve(sid, 7, 2, "a")
    await sales.change_state(sid, "end")
    proc = ReconcilerProcess(settings, "end").start()
    try:
        await wait_drained(redis, pool, sid, rows=1)
        for _ in range(150):  # the hold expires (2 s), then the sweeper closes the sale
            if await pool.fetchval("SELECT status FROM flash_sales WHERE sale_id = $1",
                                   sid) == "closed":
                break
            await asyncio.sleep(0.1)
    finally:
        proc.stop()
    assert await pool.fetchval("SELECT status FROM flash_sales WHERE sale_id = $1",
                               sid) == "closed"
    assert await pool.fetchval("SELECT available_qty FROM inventory WHERE product_id = $1",
                               product) == 10
    board = await sale_board(sales, sid)
    assert board.status == "ended" and board.expired == 2 and board.books_balanced


async def test_concurrent_creates_under_one_key_make_one_sale(sales, product_factory,
                                                              pool) -> None:
    product = await product_factory(stock=100)
    made = await asyncio.gather(*(sales.create(
        product_id=product, quantity=30, price=Decimal("4.00"), idempotency_key="drop-7")
        for _ in range(12)))
    assert len({m["sale_id"] for m in made}) == 1
    assert sum(not m["replayed"] for m in made) == 1
    assert await pool.fetchval("SELECT available_qty FROM inventory WHERE product_id = $1",
                               product) == 70
    with pytest.raises(IdempotencyKeyReused):
        await sales.create(product_id=product, quantity=31, price=Decimal("4.00"),
                           idempotency_key="drop-7")


async def test_a_create_cut_short_by_redis_says_what_is_left_and_a_retry_finishes(
        sales, product_factory, pool) -> None:
    import redis.asyncio as aioredis

    from engine.errors import Unavailable
    from engine.sales import Sales

    product = await product_factory(stock=10)
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(Unavailable) as cut:
            await Sales(pool=pool, redis=dead).create(
                product_id=product, quantity=4, price=Decimal("2.00"), idempotency_key="k9")
    finally:
        await dead.aclose()
    sid = await pool.fetchval("SELECT sale_id FROM flash_sales WHERE idempotency_key = 'k9'")
    assert f"flashsale sale load-tokens {sid}" in cut.value.message
    assert "4 units of product" in cut.value.message
    assert (await sales.get(sid))["status"] == "loading"
    again = await sales.create(product_id=product, quantity=4, price=Decimal("2.00"),
                               idempotency_key="k9")
    assert again["sale_id"] == sid and again["replayed"] and again["status"] == "ready"
    assert (await sales.view(sid)).remaining == 4
    assert await pool.fetchval("SELECT count(*) FROM flash_sales") == 1
    assert await pool.fetchval("SELECT available_qty FROM inventory WHERE product_id = $1",
                               product) == 6


async def test_a_foreign_sale_in_redis_is_no_state_for_this_one(sales, product_factory,
                                                                redis) -> None:
    """Redis left from another database holds 'sale N' too: its books are not ours."""
    product = await product_factory(stock=10)
    sid = (await sales.create(product_id=product, quantity=10, price=Decimal("1.00")))["sale_id"]
    await redis.hset(sale_keys(sid).meta, "identity", "another-database")
    board = await sale_board(sales, sid)
    assert board.books_mismatch_units == 10 and not board.books_balanced
    assert board.remaining == 10 and board.initial == 10  # Postgres's figures
