"""Apply a batch of sale events to Postgres in one transaction, idempotently.

A reservation's status moves only forward (held -> confirmed -> released | expired;
held -> released | expired), so a late or replayed event never moves it back. The
counters (``flash_sales.*_qty``, ``inventory.reserved_qty`` and ``sold_qty``) change by
the difference between a row's status before and after the batch, which makes them a
function of the rows: replaying a batch changes nothing, and two reconcilers that apply
the same events give the same result. Batches of one sale are serialised by an advisory
lock, taken in sale order so two batches never deadlock.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from engine.events import SaleEvent

RANK = {"held": 0, "confirmed": 1, "released": 2, "expired": 2}
STATUS_OF = {"reserved": "held", "confirmed": "confirmed", "released": "released",
             "expired": "expired"}
_LOCK_NAMESPACE = 0x5A1E  # pg_advisory_xact_lock(namespace, sale_id)


def stream_id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class _Row:
    reservation_id: str
    sale_id: int
    user_id: int
    quantity: int
    status: str
    order_id: int | None
    idempotency_key: str | None
    created_ms: int
    expires_ms: int


@dataclass
class BatchResult:
    applied: Counter = field(default_factory=Counter)  # transitions made, by event type
    ignored: int = 0  # replays and late events that changed nothing
    conflicts: int = 0  # events naming a known reservation id with another owner


def _owner_differs(known: tuple[int, int, str | None], event: SaleEvent) -> bool:
    """True when ``event`` is not about the reservation Postgres knows under its id: another
    user or quantity, or (for ``reserved``) another idempotency key."""
    user, quantity, key = known
    if event.user_id != user or event.quantity != quantity:
        return True
    return (event.type == "reserved" and key is not None
            and event.idempotency_key is not None and event.idempotency_key != key)


async def apply_batch(conn: asyncpg.Connection, events: list[SaleEvent]) -> BatchResult:
    """Write ``events`` (in stream order per sale) inside the caller's transaction."""
    result = BatchResult()
    sale_ids = sorted({e.sale_id for e in events})
    for sale_id in sale_ids:
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_NAMESPACE, sale_id)
    ids = list({e.reservation_id for e in events if e.reservation_id})
    known = await conn.fetch(
        "SELECT reservation_id, status, user_id, quantity, idempotency_key"
        " FROM sale_reservations WHERE reservation_id = ANY($1)", ids)
    before = {r["reservation_id"]: r["status"] for r in known}
    owners = {r["reservation_id"]: (r["user_id"], r["quantity"], r["idempotency_key"])
              for r in known}

    rows: dict[str, _Row] = {}
    conflicts: list[tuple[SaleEvent, tuple[int, int, str | None]]] = []
    for event in events:
        status = STATUS_OF.get(event.type)
        if status is None:  # 'loaded' and future types: nothing to write
            continue
        owner = owners.get(event.reservation_id)
        if owner is not None and _owner_differs(owner, event):
            # A reused id: recorded, never merged into the other buyer's row.
            conflicts.append((event, owner))
            continue
        owners.setdefault(event.reservation_id,
                          (event.user_id, event.quantity, event.idempotency_key))
        row = rows.get(event.reservation_id)
        current = row.status if row else before.get(event.reservation_id)
        if current is not None and RANK[status] <= RANK[current]:
            result.ignored += 1
            if row is not None and event.type == "reserved":
                row.created_ms = min(row.created_ms, event.at_ms)
                row.idempotency_key = row.idempotency_key or event.idempotency_key
            continue
        if row is None:
            row = rows[event.reservation_id] = _Row(
                reservation_id=event.reservation_id, sale_id=event.sale_id,
                user_id=event.user_id, quantity=event.quantity, status=status,
                order_id=event.order_id, idempotency_key=event.idempotency_key,
                created_ms=event.at_ms, expires_ms=event.expires_ms or event.at_ms)
        row.status = status
        row.order_id = event.order_id or row.order_id
        result.applied[event.type] += 1

    if rows:
        await _upsert(conn, list(rows.values()))
        await _move_counters(conn, rows, before)
    if conflicts:
        await _record_conflicts(conn, conflicts)
        result.conflicts = len(conflicts)
    await _advance_stream_ids(conn, events)
    return result


async def _record_conflicts(conn: asyncpg.Connection,
                            conflicts: list[tuple[SaleEvent, tuple[int, int, str | None]]]
                            ) -> None:
    await conn.executemany(
        "INSERT INTO sale_event_conflicts (sale_id, stream_id, reservation_id, event_type,"
        " user_id, quantity, idempotency_key, known_user_id, known_quantity,"
        " known_idempotency_key, bucket) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (sale_id, bucket, stream_id) DO NOTHING",
        [(e.sale_id, e.stream_id, e.reservation_id, e.type, e.user_id, e.quantity,
          e.idempotency_key, *known, e.bucket) for e, known in conflicts])


async def _upsert(conn: asyncpg.Connection, rows: list[_Row]) -> None:
    await conn.execute(
        """
        INSERT INTO sale_reservations AS r (reservation_id, sale_id, user_id, quantity, status,
            order_id, idempotency_key, created_at, expires_at)
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[], $5::text[],
            $6::bigint[], $7::text[], $8::timestamptz[], $9::timestamptz[])
        ON CONFLICT (reservation_id) DO UPDATE SET
            status = EXCLUDED.status,
            order_id = coalesce(EXCLUDED.order_id, r.order_id),
            idempotency_key = coalesce(r.idempotency_key, EXCLUDED.idempotency_key),
            updated_at = now()
        """,
        [r.reservation_id for r in rows], [r.sale_id for r in rows],
        [r.user_id for r in rows], [r.quantity for r in rows], [r.status for r in rows],
        [r.order_id for r in rows], [r.idempotency_key for r in rows],
        [_when(r.created_ms) for r in rows], [_when(r.expires_ms) for r in rows])


async def _move_counters(conn: asyncpg.Connection, rows: dict[str, _Row],
                         before: dict[str, str]) -> None:
    deltas: dict[int, Counter] = defaultdict(Counter)
    for rid, row in rows.items():
        old = before.get(rid)
        if old == row.status:
            continue
        deltas[row.sale_id][row.status] += row.quantity
        if old is not None:
            deltas[row.sale_id][old] -= row.quantity
    if not deltas:
        return
    sale_ids = sorted(deltas)
    cols = {s: [deltas[sale][s] for sale in sale_ids]
            for s in ("held", "confirmed", "released", "expired")}
    await conn.execute(
        """
        WITH d AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[], $4::int[], $5::int[])
                   AS d(sale_id, held, confirmed, released, expired)),
        sales AS (
            UPDATE flash_sales f SET held_qty = held_qty + d.held,
                confirmed_qty = confirmed_qty + d.confirmed,
                released_qty = released_qty + d.released, expired_qty = expired_qty + d.expired
            FROM d WHERE f.sale_id = d.sale_id
            RETURNING f.product_id, d.held, d.confirmed)
        UPDATE inventory i SET reserved_qty = reserved_qty + s.held,
            sold_qty = sold_qty + s.confirmed, version = version + 1, updated_at = now()
        FROM (SELECT product_id, sum(held)::int AS held, sum(confirmed)::int AS confirmed
              FROM sales GROUP BY product_id ORDER BY product_id) s
        WHERE i.product_id = s.product_id AND (s.held <> 0 OR s.confirmed <> 0)
        """,
        sale_ids, cols["held"], cols["confirmed"], cols["released"], cols["expired"])


async def _advance_stream_ids(conn: asyncpg.Connection, events: list[SaleEvent]) -> None:
    """Move each stream's point (bucket 0's in last_stream_id, the others' in
    bucket_stream_ids) to its newest applied id, never back: the books check compares
    Postgres with Redis where every point equals the stream's last id (board.py). Ids of
    two buckets' streams (two masters) never compare with each other."""
    newest: dict[tuple[int, int], str] = {}
    for e in events:
        point = (e.sale_id, e.bucket)
        if point not in newest or stream_id_key(e.stream_id) > stream_id_key(newest[point]):
            newest[point] = e.stream_id
    if not newest:
        return
    current = {r["sale_id"]: r for r in await conn.fetch(
        "SELECT sale_id, last_stream_id, bucket_stream_ids FROM flash_sales"
        " WHERE sale_id = ANY($1)", list({sale for sale, _ in newest}))}
    moved: dict[int, tuple[str | None, dict[str, str]]] = {}
    for (sale, bucket), sid in newest.items():
        row = current.get(sale)
        if row is None:
            continue
        now = (row["last_stream_id"] if bucket == 0
               else row["bucket_stream_ids"].get(str(bucket), "0-0"))
        if stream_id_key(sid) > stream_id_key(now):
            first, others = moved.get(sale, (None, {}))
            if bucket == 0:
                first = sid
            else:
                others[str(bucket)] = sid
            moved[sale] = (first, others)
    if moved:
        await conn.executemany(
            "UPDATE flash_sales SET last_stream_id = coalesce($2, last_stream_id),"
            " bucket_stream_ids = bucket_stream_ids || $3::jsonb WHERE sale_id = $1",
            [(sale, first, others) for sale, (first, others) in moved.items()])
