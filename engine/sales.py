"""Flash-sale definitions: creation (Postgres first, then tokens), loading, views.

Creating a sale is two steps that cannot share one transaction: one Postgres transaction
moves Q units out of ``inventory.available_qty`` and inserts the sale with status
``loading``; then ``load_tokens.lua`` loads Q tokens into Redis (refusing a second load)
and the sale is marked ``ready``. A crash between the two leaves a ``loading`` sale that
``flashsale sale load-tokens`` finishes, never loading twice.

An operator can pause a sale (reservations answer ``sale_not_active``; holds can still be
paid), resume it, or end it now (``change_sale_state.lua`` checks and moves the state in
Redis atomically; Postgres keeps ``paused_at`` and the new ``ends_at`` under a row lock).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from engine.buckets import all_keys, bucket_books, read_tokens, shares
from engine.errors import (
    REDIS_DOWN,
    Conflict,
    FlashsaleError,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    SaleNotActive,
    Unavailable,
    ValidationFailed,
)
from engine.keys import ACTIVE_SALES, sale_keys
from engine.refusals import channel_of
from engine.sale_records import (
    ALLOWED_FROM,
    SALE_COLUMNS,
    SaleAction,
    SaleView,
    check_buckets,
    foreign_message,
    from_ms,
    identity,
    room_of,
    to_ms,
)
from engine.scripts import SCRIPTS
from engine.waiting_room import RoomConfig, configure


class Sales:
    def __init__(self, *, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.pool = pool
        self.redis = redis

    async def create(self, *, product_id: int, quantity: int, price: Decimal,
                     starts_at: datetime | None = None, ends_at: datetime | None = None,
                     per_user_limit: int = 1, hold_seconds: int = 600,
                     idempotency_key: str | None = None,
                     waiting_room: RoomConfig | None = None,
                     buckets: int = 1) -> dict[str, Any]:
        """Create a sale and load its tokens. With ``idempotency_key``, the same key and
        request return the sale made before (``replayed`` is True; a load a crash cut
        short is finished), another request under that key is IdempotencyKeyReused.
        ``buckets`` > 1 splits the tokens over that many buckets (engine/buckets.py)."""
        if quantity < 1:
            raise ValidationFailed.at("$.quantity", "must be at least 1")
        check_buckets(buckets, quantity)
        request = {
            "product_id": product_id, "quantity": quantity, "price": str(price),
            "starts_at": starts_at and starts_at.isoformat(),
            "ends_at": ends_at and ends_at.isoformat(), "per_user_limit": per_user_limit,
            "hold_seconds": hold_seconds}
        if waiting_room is not None:  # absent otherwise: older fingerprints still match
            request["waiting_room"] = waiting_room.fields()
        if buckets != 1:  # likewise
            request["buckets"] = buckets
        fingerprint = json.dumps(request, sort_keys=True)
        if idempotency_key is not None:
            made = await self._made_before(idempotency_key, fingerprint)
            if made is not None:
                return made
        starts_at = starts_at or datetime.now(UTC)
        if ends_at is not None and ends_at <= starts_at:
            raise ValidationFailed.at("$.ends_at", "must be after starts_at")
        try:
            row = await self._insert(product_id, quantity, price, starts_at, ends_at,
                                     per_user_limit, hold_seconds, idempotency_key,
                                     fingerprint, waiting_room, buckets)
        except asyncpg.UniqueViolationError:  # the same key, created concurrently
            made = await self._made_before(idempotency_key or "", fingerprint)
            if made is None:
                raise
            return made
        await self._load_or_explain(row["sale_id"], row["product_id"], quantity)
        return {**await self.get(row["sale_id"]), "replayed": False}

    async def _insert(self, product_id: int, quantity: int, price: Decimal,
                      starts_at: datetime, ends_at: datetime | None, per_user_limit: int,
                      hold_seconds: int, idempotency_key: str | None,
                      fingerprint: str, waiting_room: RoomConfig | None,
                      buckets: int) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval(
                "UPDATE inventory SET available_qty = available_qty - $2,"
                " version = version + 1, updated_at = now()"
                " WHERE product_id = $1 AND available_qty >= $2 RETURNING available_qty",
                product_id, quantity)
            if moved is None:
                have = await conn.fetchval(
                    "SELECT coalesce(i.available_qty, 0) FROM products p"
                    " LEFT JOIN inventory i USING (product_id) WHERE p.product_id = $1",
                    product_id)
                if have is None:
                    raise NotFound(f"No product {product_id}.")
                raise InsufficientStock(
                    f"Product {product_id} has {have} units available; the sale needs "
                    f"{quantity}.", details={"available_qty": have, "requested": quantity})
            return await conn.fetchrow(
                "INSERT INTO flash_sales (product_id, quantity, price, starts_at, ends_at,"
                " per_user_limit, hold_seconds, status, idempotency_key, request_fingerprint,"
                " room_rate, room_pass_seconds, room_margin_percent, room_stock_aware, buckets)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 'loading', $8, $9, $10, $11, $12, $13,"
                " $14)"
                f" RETURNING {SALE_COLUMNS}",
                product_id, quantity, price, starts_at, ends_at, per_user_limit, hold_seconds,
                idempotency_key, fingerprint,
                *((waiting_room.admission_rate, waiting_room.pass_seconds,
                   waiting_room.pass_margin_percent, waiting_room.stock_aware)
                  if waiting_room else (None, None, None, None)), buckets)

    async def _made_before(self, key: str, fingerprint: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            "SELECT sale_id, product_id, quantity, status, request_fingerprint FROM flash_sales"
            " WHERE idempotency_key = $1", key)
        if row is None:
            return None
        if row["request_fingerprint"] != fingerprint:
            raise IdempotencyKeyReused(
                f"Sale {row['sale_id']} was created under this idempotency key with other "
                "figures; use a new key for a new sale.", details={"sale_id": row["sale_id"]})
        if row["status"] == "loading":  # cut short, or still loading in another call
            try:
                await self._load_or_explain(row["sale_id"], row["product_id"],
                                            row["quantity"])
            except Conflict:
                if (await self.get(row["sale_id"]))["status"] == "loading":
                    raise  # not the other call finishing first: a real refusal
        return {**await self.get(row["sale_id"]), "replayed": True}

    async def _load_or_explain(self, sale_id: int, product_id: int, quantity: int) -> None:
        """Load the tokens; when Redis fails, say exactly what is left and how to finish."""
        try:
            await self.load_tokens(sale_id)
        except REDIS_DOWN as exc:
            raise Unavailable(
                f"Sale {sale_id} is in Postgres, status 'loading' ({quantity} units of product "
                f"{product_id} taken out of stock), but its tokens did not reach Redis ({exc}). "
                f"Finish it with `flashsale sale load-tokens {sale_id}` (it never loads twice), "
                "or repeat the create with the same idempotency key.",
                dependency="redis") from exc

    async def get(self, sale_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            f"SELECT {SALE_COLUMNS} FROM flash_sales WHERE sale_id = $1", sale_id)
        if row is None:
            raise NotFound(f"No sale {sale_id}.")
        return dict(row)

    async def missing_from_redis(self, sale_id: int) -> FlashsaleError:
        """The error for a sale Redis does not have. Unknown to Postgres too: 404. Known
        and closed: not active. Known and open: Redis lost it (restarted without its data)
        and `sale recover` will bring it back, so 503: the client retries, never gives up."""
        status = await self.pool.fetchval(
            "SELECT status FROM flash_sales WHERE sale_id = $1", sale_id)
        if status is None:
            return NotFound(f"No sale {sale_id}.")
        if status == "closed":
            return SaleNotActive("The sale is not active (ended).",
                                 details={"sale_id": sale_id, "reason": "ended"})
        return Unavailable(f"Sale {sale_id} is being restored; retry shortly.",
                           dependency="redis")

    async def load_tokens(self, sale_id: int) -> int:
        """Load a ``loading`` sale's tokens and mark it ready; returns the tokens loaded.
        Refuses a sale that is already loaded (its Redis state exists or it is ready)."""
        sale = await self.get(sale_id)
        if sale["status"] != "loading":
            raise Conflict(
                f"Sale {sale_id} is already {sale['status']}; its tokens were loaded. If Redis "
                "lost them, use `flashsale sale recover`.")
        room = room_of(sale)
        if room is not None:  # before the tokens: no unit is ever sold past the room
            await configure(self.redis, sale_id, room)
        count = sale["buckets"]
        loaded = 0
        # Bucket 0 last: its meta (with the bucket count) says every bucket is loaded.
        for bucket, share in reversed(list(enumerate(shares(sale["quantity"], count)))):
            answer = await SCRIPTS.load_tokens(self.redis, sale_keys(sale_id, bucket).for_load, (
                sale["product_id"], str(sale["price"]), to_ms(sale["starts_at"]),
                to_ms(sale["ends_at"]), sale["per_user_limit"], sale["hold_seconds"] * 1000,
                share, share, 0, 0, identity(sale), 0, count))
            if answer[0] == b"foreign":
                raise Conflict(foreign_message(sale_id))
            # "exists": loaded before a crash kept us from marking it ready: finish, never
            # load twice.
            loaded += answer[1] if answer[0] == b"ok" else 0
        await self.redis.sadd(ACTIVE_SALES, sale_id)
        await self.pool.execute(
            "UPDATE flash_sales SET status = 'ready' WHERE sale_id = $1 AND status = 'loading'",
            sale_id)
        return loaded

    async def change_state(self, sale_id: int, action: SaleAction) -> dict[str, Any]:
        """Pause, resume or end a sale now; returns the sale's row after the move.
        NotFound for an unknown sale, InvalidTransition when the move is not allowed."""
        keys = sale_keys(sale_id)
        async with self.pool.acquire() as conn, conn.transaction():
            sale = await conn.fetchrow(
                "SELECT status FROM flash_sales WHERE sale_id = $1 FOR UPDATE", sale_id)
            if sale is None:
                raise NotFound(f"No sale {sale_id}.")
            if sale["status"] == "loading":
                raise InvalidTransition(
                    f"Sale {sale_id} is still loading its tokens; finish it with "
                    f"`flashsale sale load-tokens {sale_id}` first.",
                    details={"sale_id": sale_id, "status": "loading", "action": action})
            # Redis moves first, inside the row lock: a second operator waits for us.
            # Bucket 0 decides (and answers); the other buckets follow it.
            channel = channel_of(self.redis)
            answer = await SCRIPTS.change_sale_state(
                self.redis, keys.for_state, (action, channel, sale_id))
            if answer[0] == b"ok":
                for other in all_keys(sale_id, await self.bucket_count(sale_id))[1:]:
                    await SCRIPTS.change_sale_state(self.redis, other.for_state,
                                                    (action, channel, other.name))
            if answer[0] == b"no_sale":
                raise Conflict(
                    f"Sale {sale_id} has no state in Redis (lost?): rebuild it with "
                    f"`flashsale sale recover {sale_id}` first.", details={"sale_id": sale_id})
            before = answer[1].decode()
            if answer[0] == b"invalid":
                allowed = ", ".join(ALLOWED_FROM[action])
                raise InvalidTransition(
                    f"Cannot {action} sale {sale_id}: it is {before} (allowed from: "
                    f"{allowed}).", details={"sale_id": sale_id, "status": before,
                                              "action": action})
            if action == "pause":
                await conn.execute(
                    "UPDATE flash_sales SET paused_at = now() WHERE sale_id = $1", sale_id)
            elif action == "resume":
                await conn.execute(
                    "UPDATE flash_sales SET paused_at = NULL WHERE sale_id = $1", sale_id)
            else:
                await conn.execute(
                    "UPDATE flash_sales SET ends_at = $3, starts_at = CASE WHEN starts_at >= $3"
                    " THEN $2 ELSE starts_at END WHERE sale_id = $1",
                    sale_id, from_ms(int(answer[2])), from_ms(int(answer[3])))
        return await self.get(sale_id)

    async def view(self, sale_id: int) -> SaleView:
        """The shopper's view, from Redis alone (no Postgres on this path)."""
        keys = sale_keys(sale_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.meta, "product_id", "price", "starts_ms", "ends_ms", "state",
                       "per_user_limit", "tokens", "buckets")
            (meta,) = await pipe.execute()
        if meta[0] is None:
            raise NotFound(f"No sale {sale_id}.")
        product_id, price, starts, ends, state, limit, tokens, count = meta
        remaining = int(tokens or 0)
        if count is not None and int(count) > 1:  # the sum over buckets
            remaining += sum(await read_tokens(self.redis, all_keys(sale_id, int(count))[1:]))
        now = time.time() * 1000
        if state == b"closed" or (int(ends) and now >= int(ends)):
            status = "ended"
        elif state == b"paused":
            status = "paused"
        elif now < int(starts):
            status = "scheduled"
        elif remaining <= 0:
            status = "sold_out"
        else:
            status = "active"
        return SaleView(sale_id=sale_id, product_id=int(product_id), price=Decimal(price.decode()),
                        remaining=remaining, status=status, starts_at=from_ms(int(starts)),
                        ends_at=from_ms(int(ends)), per_user_limit=int(limit))

    async def bucket_count(self, sale_id: int) -> int:
        """The sale's bucket count (1 also when Redis has no such sale)."""
        return int(await self.redis.hget(sale_keys(sale_id).meta, "buckets") or 1)

    async def counts(self, sale_id: int) -> dict[str, int]:
        """Redis's books for a sale, summed over its buckets: initial, tokens, held,
        confirmed, in_transit (units between two buckets), live_holds, buckets, and how
        many buckets' own books do not balance or are missing (absent sale: KeyError)."""
        count = await self.bucket_count(sale_id)
        books = [await bucket_books(self.redis, sale_id, b) for b in range(count)]
        if books[0] is None:
            raise KeyError(sale_id)
        holds = await asyncio.gather(*(self.redis.zcard(k.holds)
                                       for k in all_keys(sale_id, count)))
        present = [b for b in books if b is not None]
        return {"initial": sum(b.initial for b in present),
                "tokens": sum(b.tokens for b in present),
                "held": sum(b.held for b in present),
                "confirmed": sum(b.confirmed for b in present),
                "in_transit": sum(b.moved_out - b.moved_in for b in present),
                "live_holds": sum(holds), "buckets": count,
                "buckets_missing": count - len(present),
                "buckets_unbalanced": sum(1 for b in present if not b.balanced)}
