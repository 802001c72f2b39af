"""Wishlists: the products a shopper keeps an eye on, newest first, with live figures.

Adding is idempotent (adding a listed product again changes nothing and says so) and
capped per user; the cap holds under concurrent adds because each add locks the user's
row first. When a listed product gets cheaper or comes back in stock, a trigger writes a
``wishlist.price_drop`` or ``wishlist.back_in_stock`` notification per user into the
outbox in the transaction of that change, whichever code path made it
(migrations/0017_discovery.sql); ``flashsale notify`` delivers them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec

from engine.errors import NotFound, Unprocessable

WISHLIST_CAP = 200  # products per user


class WishlistFull(Unprocessable):
    code, message = "wishlist_full", f"A wishlist holds at most {WISHLIST_CAP} products."


class WishlistItem(msgspec.Struct, frozen=True):
    product_id: int
    name: str
    brand: str
    price: Decimal  # now
    price_when_added: Decimal
    currency: str
    available_qty: int  # now
    status: str  # active, inactive or archived: a listed product may stop being sold
    added_at: datetime


class Wishlist(msgspec.Struct, frozen=True):
    items: list[WishlistItem]


_ITEM = ("SELECT w.product_id, p.name, p.brand, p.price, w.price_at_added, p.currency,"
         " coalesce(i.available_qty, 0), p.status, w.added_at"
         " FROM wishlist_items w JOIN products p USING (product_id)"
         " LEFT JOIN inventory i USING (product_id)")


def _item(row: asyncpg.Record) -> WishlistItem:
    return WishlistItem(*row.values())


class Wishlists:
    def __init__(self, *, pool: asyncpg.Pool, cap: int = WISHLIST_CAP) -> None:
        self._pool = pool
        self.cap = cap

    async def items(self, user_id: int) -> Wishlist:
        rows = await self._pool.fetch(
            _ITEM + " WHERE w.user_id = $1 ORDER BY w.added_at DESC, w.product_id DESC",
            user_id)
        return Wishlist(items=[_item(r) for r in rows])

    async def add(self, user_id: int, product_id: int) -> tuple[WishlistItem, bool]:
        """The listed item and whether it was added now (False: it was already there)."""
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialises one user's adds, so the count below cannot be raced past the cap.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE",
                               user_id)
            added = await conn.fetchval(
                "INSERT INTO wishlist_items (user_id, product_id, price_at_added)"
                " SELECT $1, product_id, price FROM products"
                " WHERE product_id = $2 AND status = 'active'"
                " ON CONFLICT (user_id, product_id) DO NOTHING RETURNING true",
                user_id, product_id)
            if added:
                held = await conn.fetchval(
                    "SELECT count(*) FROM wishlist_items WHERE user_id = $1", user_id)
                if held > self.cap:
                    raise WishlistFull(details={"cap": self.cap})  # rolls the insert back
            row = await conn.fetchrow(_ITEM + " WHERE w.user_id = $1 AND w.product_id = $2",
                                      user_id, product_id)
        if row is None:
            raise NotFound("No such product.")
        return _item(row), bool(added)

    async def remove(self, user_id: int, product_id: int) -> None:
        removed = await self._pool.fetchval(
            "DELETE FROM wishlist_items WHERE user_id = $1 AND product_id = $2 RETURNING true",
            user_id, product_id)
        if not removed:
            raise NotFound("That product is not on your wishlist.")
