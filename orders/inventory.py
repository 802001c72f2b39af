"""Regular stock (``inventory``) as the purchase path moves it: every mutation beside its
inverse, as saleor keeps ``allocate_stocks`` beside ``deallocate_stock``.

- ``take`` (checkout of a cart) and ``put_back`` (its compensation) move units between
  ``available_qty`` and ``sold_qty``; rows are locked in product order, so two carts that
  share products never deadlock.
- ``put_back_counted`` returns flash-sale units once the reconciler has counted them sold
  (``sold_qty`` moves from the sale's stream); before that it changes nothing and says so.

Flash-sale stock itself lives in Redis and moves through ``engine.admission``; the
reconciler and the sale's opening and closing own the rest of ``inventory``'s writes.
"""

from __future__ import annotations

import asyncpg

from engine.errors import InsufficientStock

_TAKE = (
    "UPDATE inventory i SET available_qty = i.available_qty - l.q,"
    " sold_qty = i.sold_qty + l.q, version = i.version + 1, updated_at = now()"
    " FROM unnest($1::bigint[], $2::int[]) AS l(pid, q)"
    # product_id = ANY: an index condition, so no plan ever scans the whole table
    " WHERE i.product_id = ANY($1::bigint[]) AND i.product_id = l.pid"
    " AND i.available_qty >= l.q RETURNING i.product_id")
_PUT_BACK = (
    "UPDATE inventory SET available_qty = available_qty + $2,"
    " sold_qty = sold_qty - $2, version = version + 1, updated_at = now()"
    " WHERE product_id = $1")


async def take(conn: asyncpg.Connection, units: dict[int, int]) -> None:
    """Conditional decrements of ``units`` (product id -> quantity), all or nothing (the
    caller's transaction rolls back on InsufficientStock), rows locked in product order."""
    pids = sorted(units)
    if len(pids) > 1:
        await conn.execute("SELECT 1 FROM inventory WHERE product_id = ANY($1::bigint[])"
                           " ORDER BY product_id FOR UPDATE", pids)
    taken = await conn.fetch(_TAKE, pids, [units[pid] for pid in pids])
    if len(taken) == len(pids):
        return
    missing = sorted(set(pids) - {r["product_id"] for r in taken})
    have = dict(await conn.fetch(
        "SELECT product_id, available_qty FROM inventory WHERE product_id = ANY($1::bigint[])",
        missing))
    raise short([{"product_id": pid, "requested": units[pid], "available_qty": have.get(pid, 0)}
                 for pid in missing])


def short(items: list[dict[str, int]]) -> InsufficientStock:
    """The error for lines whose stock ran short (product_id, requested, available_qty)."""
    return InsufficientStock("Some items are no longer available in that quantity.",
                             details={"items": items})


async def put_back(conn: asyncpg.Connection, units: dict[int, int]) -> None:
    """The inverse of ``take``: units this process counted sold go back into regular
    stock, rows locked in product order."""
    for product_id in sorted(units):
        await conn.execute(_PUT_BACK, product_id, units[product_id])


async def put_back_counted(conn: asyncpg.Connection, product_id: int, quantity: int) -> bool:
    """Put back units that someone else counted sold (the reconciler, for a flash-sale
    unit); False, with nothing changed, while they are not counted yet."""
    return await conn.fetchval(f"{_PUT_BACK} AND sold_qty >= $2 RETURNING 1",
                               product_id, quantity) is not None
