"""A sale's books as Redis and Postgres keep them, for `sale status` and the audit."""

from __future__ import annotations

from typing import Any

from engine.sales import Sales
from reconciler.lag import stream_lag


async def postgres_books(sales: Sales, sale_id: int) -> dict[str, int]:
    """Units by reservation status in sale_reservations."""
    rows = await sales.pool.fetch(
        "SELECT status, count(*) AS n, coalesce(sum(quantity), 0) AS units"
        " FROM sale_reservations WHERE sale_id = $1 GROUP BY status", sale_id)
    books = {s: 0 for s in ("held", "confirmed", "released", "expired")}
    books |= {r["status"]: int(r["units"]) for r in rows}
    return books


async def redis_books(sales: Sales, sale_id: int) -> dict[str, int] | None:
    try:
        return await sales.counts(sale_id)
    except KeyError:
        return None


async def sale_status(sales: Sales, sale_id: int) -> dict[str, Any]:
    sale = await sales.get(sale_id)
    books = await redis_books(sales, sale_id)
    status = sale["status"]
    if books is not None:
        status = (await sales.view(sale_id)).status
    return {
        "sale_id": sale_id, "product_id": sale["product_id"], "price": str(sale["price"]),
        "quantity": sale["quantity"], "status": status, "lifecycle": sale["status"],
        "redis": books, "postgres": await postgres_books(sales, sale_id),
        "lag": (await stream_lag(sales.redis, sale_id)).as_dict(),
    }
