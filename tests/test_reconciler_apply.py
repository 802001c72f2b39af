"""apply.py against real Postgres: forward-only, idempotent, order-tolerant."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from engine.events import SaleEvent
from reconciler.apply import apply_batch


async def _sale(pool, quantity: int = 10) -> tuple[int, int]:
    product = await pool.fetchval(
        "INSERT INTO products (name, price) VALUES ('P', 1) RETURNING product_id")
    await pool.execute("INSERT INTO inventory (product_id, available_qty) VALUES ($1, 0)",
                       product)
    sale = await pool.fetchval(
        "INSERT INTO flash_sales (product_id, quantity, price, status) VALUES ($1, $2, $3,"
        " 'ready') RETURNING sale_id", product, quantity, Decimal("1.00"))
    return sale, product


def ev(sale: int, n: int, kind: str, rid: str, qty: int = 1, user: int = 1, order=None):
    return SaleEvent(stream_id=f"1000-{n}", sale_id=sale, type=kind, reservation_id=rid,
                     user_id=user, quantity=qty, at_ms=1_700_000_000_000 + n,
                     expires_ms=1_700_000_600_000, order_id=order, idempotency_key=f"k{rid}")


async def _apply(pool, events):
    async with pool.acquire() as conn, conn.transaction():
        return await apply_batch(conn, events)


async def _state(pool, sale, product):
    rows = {r["reservation_id"]: (r["status"], r["order_id"]) for r in await pool.fetch(
        "SELECT reservation_id, status, order_id FROM sale_reservations WHERE sale_id = $1",
        sale)}
    counters = dict(await pool.fetchrow(
        "SELECT held_qty, confirmed_qty, released_qty, expired_qty, last_stream_id"
        " FROM flash_sales WHERE sale_id = $1", sale))
    stock = dict(await pool.fetchrow(
        "SELECT reserved_qty, sold_qty FROM inventory WHERE product_id = $1", product))
    return rows, counters, stock


async def test_batch_applies_and_replay_changes_nothing(pool) -> None:
    sale, product = await _sale(pool)
    batch = [ev(sale, 1, "reserved", "a", qty=2), ev(sale, 2, "reserved", "b"),
             ev(sale, 3, "reserved", "c"), ev(sale, 4, "confirmed", "a", qty=2, order=77),
             ev(sale, 5, "expired", "b"), ev(sale, 6, "released", "c")]
    result = await _apply(pool, batch)
    assert sum(result.applied.values()) == 6
    first = await _state(pool, sale, product)
    rows, counters, stock = first
    assert rows == {"a": ("confirmed", 77), "b": ("expired", None), "c": ("released", None)}
    assert counters == {"held_qty": 0, "confirmed_qty": 2, "released_qty": 1, "expired_qty": 1,
                        "last_stream_id": "1000-6"}
    assert stock == {"reserved_qty": 0, "sold_qty": 2}
    replay = await _apply(pool, batch)
    assert sum(replay.applied.values()) == 0 and replay.ignored == 6
    assert await _state(pool, sale, product) == first
    # Replaying a prefix later (a claimed, stale delivery) cannot move anything back.
    await _apply(pool, batch[:3])
    assert await _state(pool, sale, product) == first


async def test_late_events_never_move_state_back(pool) -> None:
    sale, product = await _sale(pool)
    # The confirmation arrives before the reservation (two consumers, claimed entries).
    await _apply(pool, [ev(sale, 2, "confirmed", "a", order=5)])
    await _apply(pool, [ev(sale, 1, "reserved", "a")])
    rows, counters, stock = await _state(pool, sale, product)
    assert rows == {"a": ("confirmed", 5)}
    assert counters["held_qty"] == 0 and counters["confirmed_qty"] == 1
    assert stock == {"reserved_qty": 0, "sold_qty": 1}
    assert counters["last_stream_id"] == "1000-2"
    # A paid order cancelled while the sale runs: confirmed -> released is forward.
    await _apply(pool, [ev(sale, 3, "released", "a")])
    rows, counters, stock = await _state(pool, sale, product)
    assert rows == {"a": ("released", 5)} and counters["confirmed_qty"] == 0
    assert counters["released_qty"] == 1 and stock["sold_qty"] == 0


async def test_two_writers_with_the_same_events_agree(pool) -> None:
    sale, product = await _sale(pool, quantity=400)
    batch = [ev(sale, i, "reserved", f"r{i}", user=i) for i in range(1, 301)]
    batch += [ev(sale, 300 + i, "confirmed", f"r{i}", user=i, order=i) for i in range(1, 101)]
    batch += [ev(sale, 400 + i, "expired", f"r{i}", user=i) for i in range(101, 151)]
    await asyncio.gather(*(_apply(pool, batch) for _ in range(4)),
                         _apply(pool, batch[:200]), _apply(pool, batch[200:]))
    rows, counters, stock = await _state(pool, sale, product)
    assert len(rows) == 300
    assert counters["held_qty"] == 150 and counters["confirmed_qty"] == 100
    assert counters["expired_qty"] == 50
    assert stock == {"reserved_qty": 150, "sold_qty": 100}
