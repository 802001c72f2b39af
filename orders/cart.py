"""Carts: one Redis hash per user (``engine.keys.cart_key``), 30 days from the last write.

A line is keyed by its product id (the line's ``item_id``: one line per product) and keeps
the quantity, and the unit price and name the shopper saw when adding it. That snapshot
is what the cart shows; checkout prices the order from Postgres again and reports any
difference instead of charging it (see orders/checkout/plan.py).

Writes are optimistic Redis transactions (WATCH the cart, read, MULTI/EXEC), retried with
a random, growing backoff when a concurrent write to the same cart got in first, so
concurrent adds never lose units. A paid checkout's units leave the cart through one
script call (lua/take_from_cart.lua) that also leaves a marker field
(``done:<checkout id>``), so repeating it (a resumed checkout) takes nothing twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from engine.codec import encode
from engine.errors import Conflict, InsufficientStock, NotFound, ValidationFailed
from engine.keys import cart_key
from engine.scripts import SCRIPTS
from orders.pricing import ZERO, line_subtotal

CART_TTL_SECONDS = 30 * 24 * 3600
DONE = "done:"  # marker fields: checkouts whose units already left this cart
DONE_KEPT_MS = 24 * 3600 * 1000  # a marker outlives by far any checkout it guards
MAX_LINES = 50
MAX_QUANTITY = 99
_RETRIES = 20


class CartLine(msgspec.Struct, frozen=True):
    q: int  # quantity (first: lua/take_from_cart.lua reads and rewrites it in place)
    p: Decimal  # unit price shown to the shopper
    n: str  # product name
    at: int  # added, ms (keeps the lines in the order the shopper added them)


_decode = msgspec.json.Decoder(CartLine).decode


@dataclass(frozen=True, slots=True)
class CartItem:
    item_id: int
    product_id: int
    name: str
    quantity: int
    unit_price: Decimal
    subtotal: Decimal


@dataclass(frozen=True, slots=True)
class Cart:
    items: list[CartItem]
    subtotal: Decimal


Lines = dict[int, CartLine]
Change = Callable[[Lines], dict[int, CartLine | None]]  # product id -> new line, None: delete


def _lines(raw: dict[bytes, bytes]) -> Lines:
    return {int(field): _decode(value) for field, value in raw.items()
            if not field.startswith(DONE.encode())}


def cart_of(lines: Lines) -> Cart:
    items = [CartItem(item_id=pid, product_id=pid, name=line.n, quantity=line.q,
                      unit_price=line.p, subtotal=line_subtotal(line.p, line.q))
             for pid, line in sorted(lines.items(), key=lambda kv: (kv[1].at, kv[0]))]
    return Cart(items=items, subtotal=sum((i.subtotal for i in items), ZERO))


class Carts:
    def __init__(self, *, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self._pool = pool
        self._redis = redis

    async def lines(self, user_id: int) -> Lines:
        return _lines(await self._redis.hgetall(cart_key(user_id)))

    async def view(self, user_id: int) -> Cart:
        return cart_of(await self.lines(user_id))

    async def add(self, user_id: int, product_id: int, quantity: int) -> Cart:
        product = await self._product(product_id)

        def change(lines: Lines) -> dict[int, CartLine | None]:
            line = lines.get(product_id)
            if line is None and len(lines) >= MAX_LINES:
                raise ValidationFailed.at("$.product_id", f"a cart holds at most {MAX_LINES} lines")
            total = quantity + (line.q if line else 0)
            self._check_quantity(total, product)
            # Adding again shows the current price: the snapshot follows what the shopper saw.
            return {product_id: CartLine(q=total, p=product["price"], n=product["name"],
                                         at=line.at if line else int(time.time() * 1000))}

        return cart_of(await self._update(user_id, change))

    async def set_quantity(self, user_id: int, item_id: int, quantity: int) -> Cart:
        if item_id not in await self.lines(user_id):
            raise NotFound("No such cart item.")
        product = await self._product(item_id)

        def change(lines: Lines) -> dict[int, CartLine | None]:
            line = lines.get(item_id)
            if line is None:
                raise NotFound("No such cart item.")
            self._check_quantity(quantity, product)
            return {item_id: msgspec.structs.replace(line, q=quantity)}

        return cart_of(await self._update(user_id, change))

    async def remove(self, user_id: int, item_id: int) -> Cart:
        def change(lines: Lines) -> dict[int, CartLine | None]:
            if item_id not in lines:
                raise NotFound("No such cart item.")
            return {item_id: None}

        return cart_of(await self._update(user_id, change))

    async def reprice(self, user_id: int, prices: dict[int, Decimal]) -> None:
        """Show the shopper the current prices of these lines (after a checkout found that
        they changed)."""
        def change(lines: Lines) -> dict[int, CartLine | None]:
            return {pid: msgspec.structs.replace(lines[pid], p=price)
                    for pid, price in prices.items() if pid in lines}

        await self._update(user_id, change)

    async def remove_ordered(self, user_id: int, ordered: dict[int, int], *,
                             checkout_id: int) -> bool:
        """Take the ordered units out of the cart, once per checkout (False: already
        done); units the shopper added while the checkout ran stay."""
        args: list[object] = [f"{DONE}{checkout_id}", int(time.time() * 1000), DONE_KEPT_MS,
                              CART_TTL_SECONDS]
        for pid, qty in ordered.items():
            args += [pid, qty]
        return bool(await SCRIPTS.take_from_cart(self._redis, [cart_key(user_id)], args))

    # -- internals -----------------------------------------------------------------------
    async def _update(self, user_id: int, change: Change) -> Lines:
        """Apply ``change`` atomically (optimistic: retried when another write got in)."""
        key = cart_key(user_id)
        for attempt in range(_RETRIES):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hgetall(key)
                    lines = _lines(raw)
                    writes = change(lines)
                    if not writes:
                        return lines
                    pipe.multi()
                    for pid, line in writes.items():
                        if line is None:
                            pipe.hdel(key, str(pid))
                            lines.pop(pid, None)
                        else:
                            pipe.hset(key, str(pid), encode(line))
                            lines[pid] = line
                    pipe.expire(key, CART_TTL_SECONDS)
                    await pipe.execute()
                    return lines
                except WatchError:
                    # Many writers on one cart: back off a random, growing moment so they
                    # stop colliding instead of retrying in lockstep.
                    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))
        raise Conflict("The cart is being changed by another request; try again.")

    async def _product(self, product_id: int) -> dict[str, Any]:
        row = await self._pool.fetchrow(
            "SELECT p.name, p.price, p.status, coalesce(i.available_qty, 0) AS available_qty"
            " FROM products p LEFT JOIN inventory i USING (product_id)"
            " WHERE p.product_id = $1", product_id)
        if row is None or row["status"] != "active":
            raise NotFound("No such product.")
        return dict(row)

    @staticmethod
    def _check_quantity(quantity: int, product: dict[str, Any]) -> None:
        if quantity > MAX_QUANTITY:
            raise ValidationFailed.at("$.quantity", f"at most {MAX_QUANTITY} of one product")
        if quantity > product["available_qty"]:
            raise InsufficientStock(
                f"Only {product['available_qty']} left in stock.",
                details={"available_qty": product["available_qty"], "requested": quantity})
