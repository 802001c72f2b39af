"""A sale's units by reservation status as Postgres keeps them, for the audit. (The
operator's view of a sale, `sale status` and the admin API, is reconciler/board.py.)"""

from __future__ import annotations

from engine.sales import Sales


async def postgres_books(sales: Sales, sale_id: int) -> dict[str, int]:
    """Units by reservation status in sale_reservations."""
    rows = await sales.pool.fetch(
        "SELECT status, count(*) AS n, coalesce(sum(quantity), 0) AS units"
        " FROM sale_reservations WHERE sale_id = $1 GROUP BY status", sale_id)
    books = {s: 0 for s in ("held", "confirmed", "released", "expired")}
    books |= {r["status"]: int(r["units"]) for r in rows}
    return books


async def parked(sales: Sales, sale_id: int) -> dict[str, int]:
    """What the reconciler set aside for the sale and no operator has resolved yet
    (reconciler/parked.py): events naming a reservation id another buyer holds
    (conflicts), and events Postgres refused (dead letters)."""
    row = await sales.pool.fetchrow(
        "SELECT (SELECT count(*) FROM sale_event_conflicts WHERE sale_id = $1"
        " AND resolved_at IS NULL) AS conflicts, (SELECT count(*) FROM sale_dead_letters"
        " WHERE sale_id = $1 AND resolved_at IS NULL) AS dead_letters", sale_id)
    return {"conflicts": row["conflicts"], "dead_letters": row["dead_letters"]}
