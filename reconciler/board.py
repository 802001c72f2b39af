"""A sale's board: what an operator watches (the admin API, `flashsale sale list|status`,
the console) and the books check behind the mismatch gauge.

The books balance when ``initial = tokens + held + confirmed`` in Redis, no unit is sold
twice (``held + confirmed <= initial``), and Postgres agrees once it has applied exactly
the events Redis has written. Redis's counters and its stream's last id are read in one
MULTI, so the comparison with Postgres is made at one point of the stream or not at all
(never a false alarm while events are in flight).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
from redis.exceptions import ResponseError

from engine.buckets import BUCKET_FIELDS, bucket_of
from engine.codec import text
from engine.keys import sale_keys
from engine.sale_records import from_ms, identity
from engine.sales import Sales
from engine.waiting_room import room_figures
from reconciler.lag import stream_lag

BoardStatus = Literal["scheduled", "active", "paused", "sold_out", "ended"]
BOARD_STATUSES: tuple[str, ...] = ("scheduled", "active", "paused", "sold_out", "ended")


class SaleBoard(msgspec.Struct):
    sale_id: int
    product_id: int
    product_name: str
    price: Decimal
    status: BoardStatus
    initial: int
    remaining: int
    held: int
    confirmed: int
    released: int
    expired: int
    starts_at: datetime | None
    ends_at: datetime | None
    per_user_limit: int
    hold_seconds: int
    reconciler_lag: int  # events not yet applied to Postgres
    books_balanced: bool
    books_mismatch_units: int  # 0 when balanced
    admissions_total: int  # units admitted, as applied to Postgres (monotonic)
    waiting_room: dict[str, Any] | None = None
    buckets: int = 1  # Redis buckets the tokens are split over (engine/buckets.py)
    in_transit: int = 0  # units moving between two buckets (0 with one bucket)


@dataclass(frozen=True, slots=True)
class RedisBooks:
    initial: int
    tokens: int
    held: int
    confirmed: int
    state: str
    starts_ms: int
    ends_ms: int
    last_id: str  # the stream's last written id ('0-0' when it has none)
    identity: str  # which sale of which database loaded this state (engine.sale_records.identity)
    in_transit: int = 0  # units between two buckets (engine/buckets.py)
    # Buckets 1.. of a sale split into buckets: each one's stream's last id, read with that
    # bucket's counters; None where a bucket has no state.
    other_ids: tuple[str | None, ...] = ()


async def redis_books(sales: Sales, sale_id: int) -> RedisBooks | None:
    """The sale's counters and its stream's last id, read atomically; None without state.
    A sale split into buckets: the sums over its buckets, each bucket's counters read
    atomically with its own stream's last id (each bucket balances by itself, so the sums
    balance with the units in transit whatever moved between the reads)."""
    meta, last = await _point(sales, sale_id, 0, (
        "initial", "held", "confirmed", "state", "starts_ms", "ends_ms", "identity",
        "tokens", "buckets", "moved_in", "moved_out"))
    if meta[0] is None:
        return None
    (initial, held, confirmed, state, starts, ends, loaded_by, tokens, count, moved_in,
     moved_out) = meta
    books = RedisBooks(initial=int(initial), tokens=int(tokens or 0), held=int(held),
                       confirmed=int(confirmed), state=text(state), starts_ms=int(starts),
                       ends_ms=int(ends), last_id=last, identity=text(loaded_by or b""),
                       in_transit=int(moved_out or 0) - int(moved_in or 0))
    if count is None or int(count) == 1:
        return books
    points = [await _point(sales, sale_id, b, BUCKET_FIELDS) for b in range(1, int(count))]
    others = [bucket_of(b, fields) for b, (fields, _) in enumerate(points, 1)]
    others = [b for b in others if b is not None]
    return replace(books, other_ids=tuple(last if fields[0] is not None else None
                                          for fields, last in points),
                   initial=books.initial + sum(b.initial for b in others),
                   tokens=books.tokens + sum(b.tokens for b in others),
                   held=books.held + sum(b.held for b in others),
                   confirmed=books.confirmed + sum(b.confirmed for b in others),
                   in_transit=books.in_transit + sum(b.moved_out - b.moved_in for b in others))


async def _point(sales: Sales, sale_id: int, bucket: int, fields: tuple[str, ...]
                 ) -> tuple[list, str]:
    """A bucket's meta ``fields`` and its stream's last id ('0-0' without one), in one
    MULTI on the bucket's slot."""
    keys = sale_keys(sale_id, bucket)
    async with sales.redis.pipeline(transaction=True) as pipe:
        pipe.hmget(keys.meta, *fields)
        pipe.xinfo_stream(keys.events)
        meta, stream = await pipe.execute(raise_on_error=False)
    if isinstance(meta, Exception):
        raise meta
    last = "0-0" if isinstance(stream, ResponseError) else text(stream["last-generated-id"])
    return meta, last


def at_redis_point(row: Any, books: RedisBooks) -> bool:
    """Postgres (``row``, read after ``books``) has applied exactly what Redis had written
    when it was read: every stream's point equals that stream's last id."""
    if row["last_stream_id"] != books.last_id:
        return False
    points = row["bucket_stream_ids"] or {}
    return all(last is not None and points.get(str(b), "0-0") == last
               for b, last in enumerate(books.other_ids, 1))


def of_this_sale(books: RedisBooks | None, row: Any) -> RedisBooks | None:
    """``books`` when Redis holds this very sale; None when it holds another sale under
    the same id (Redis left from another database): that is no state for this one."""
    return books if books is not None and books.identity == identity(row) else None


def mismatch_units(row: Any, books: RedisBooks | None) -> int:
    """Units by which the books fail to balance (0 when they do). ``row`` is the sale's
    flash_sales row (with ``created_at``), read after ``books``."""
    books = of_this_sale(books, row)
    if books is None:  # no Redis state: fine once closed or while loading, else all is lost
        return 0 if row["status"] in ("closed", "loading") else row["quantity"]
    gap = abs(books.initial - (books.tokens + books.held + books.confirmed + books.in_transit))
    gap += max(0, books.held + books.confirmed - books.initial)  # oversold
    gap += abs(books.initial - row["quantity"])
    if at_redis_point(row, books):  # Postgres stands exactly where Redis read
        gap += abs(row["held_qty"] - books.held) + abs(row["confirmed_qty"] - books.confirmed)
    return gap


def board_status(books: RedisBooks | None, row: Any, now_ms: float) -> str:
    if books is None:
        if row["status"] == "closed":
            return "ended"
        starts = row["starts_at"].timestamp() * 1000
        return "scheduled" if now_ms < starts else "active"
    if books.state == "closed" or (books.ends_ms and now_ms >= books.ends_ms):
        return "ended"
    if books.state == "paused":
        return "paused"
    if now_ms < books.starts_ms:
        return "scheduled"
    return "sold_out" if books.tokens <= 0 else "active"


BOARD_QUERY = (
    "SELECT f.sale_id, f.product_id, p.name AS product_name, f.quantity, f.price,"
    " f.starts_at, f.ends_at, f.per_user_limit, f.hold_seconds, f.status, f.held_qty,"
    " f.confirmed_qty, f.released_qty, f.expired_qty, f.last_stream_id,"
    " f.bucket_stream_ids, f.created_at, f.buckets"
    " FROM flash_sales f JOIN products p USING (product_id)")


async def _board(sales: Sales, sale_id: int) -> SaleBoard | None:
    books = await redis_books(sales, sale_id)
    lag = await stream_lag(sales.redis, sale_id)
    # Postgres is read after Redis: it can only be at or past Redis's stream point.
    row = await sales.pool.fetchrow(BOARD_QUERY + " WHERE f.sale_id = $1", sale_id)
    if row is None:
        return None
    now_ms = time.time() * 1000
    mismatch = mismatch_units(row, books)
    books = of_this_sale(books, row)
    if books is not None:
        remaining, held, confirmed = books.tokens, books.held, books.confirmed
        starts, ends = from_ms(books.starts_ms), from_ms(books.ends_ms)
    else:
        held, confirmed = row["held_qty"], row["confirmed_qty"]
        remaining = 0 if row["status"] == "loading" else row["quantity"] - held - confirmed
        starts, ends = row["starts_at"], row["ends_at"]
    return SaleBoard(
        sale_id=sale_id, product_id=row["product_id"], product_name=row["product_name"],
        price=row["price"], status=board_status(books, row, now_ms), initial=row["quantity"],
        remaining=remaining, held=held, confirmed=confirmed, released=row["released_qty"],
        expired=row["expired_qty"], starts_at=starts, ends_at=ends,
        per_user_limit=row["per_user_limit"], hold_seconds=row["hold_seconds"],
        reconciler_lag=lag.pending, books_balanced=mismatch == 0,
        books_mismatch_units=mismatch,
        admissions_total=(row["held_qty"] + row["confirmed_qty"] + row["released_qty"]
                          + row["expired_qty"]),
        waiting_room=await room_figures(sales.redis, sale_id), buckets=row["buckets"],
        in_transit=books.in_transit if books is not None else 0)


async def sale_board(sales: Sales, sale_id: int) -> SaleBoard | None:
    """One sale's board; None for an unknown sale."""
    return await _board(sales, sale_id)


async def sale_boards(sales: Sales, *, status: str | None = None,
                      limit: int = 500) -> list[SaleBoard]:
    """The newest ``limit`` sales' boards, newest first, optionally of one status."""
    ids = [r["sale_id"] for r in await sales.pool.fetch(
        "SELECT sale_id FROM flash_sales ORDER BY created_at DESC, sale_id DESC LIMIT $1",
        limit)]
    boards = []
    for start in range(0, len(ids), 50):  # a bounded number of reads in flight
        boards += await asyncio.gather(*(_board(sales, s) for s in ids[start:start + 50]))
    return [b for b in boards if b is not None and (status is None or b.status == status)]


SALE_BOARD_FIELDS: tuple[str, ...] = SaleBoard.__struct_fields__
