"""Rebuild a sale's Redis state from Postgres, for a Redis that lost it (a restart without
AOF), or that diverged from Postgres while it still has the sale (``force``: lost writes
under ``appendfsync everysec``, found by the audit). Postgres knows every event the
reconciler applied; admissions that never reached it are the AOF's to keep, not ours to
invent.

Everything but the sale's meta is written first; ``load_tokens.lua`` writes the meta last
and refuses if it exists, so the sale admits nobody until the rebuild is complete and a
sale still present in Redis is never overwritten unless forced. A forced repair first
stops admissions (state ``repairing``: reservations get 409 sale_not_active), waits until
the reconciler has applied everything Redis wrote, then drops the sale's Redis state and
rebuilds it the same way: Postgres-known holds restored, tokens recomputed, the id
sequence kept above every id Redis or Postgres ever issued. A sale split into buckets is
rebuilt bucket by bucket: each reservation to the bucket its id names, the tokens left
spread over the buckets (transfers in transit are settled by the recount).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.buckets import all_keys, shares
from engine.errors import Conflict
from engine.keys import (
    ACTIVE_SALES,
    SaleKeys,
    bucket_of_reservation,
    buyer_key_field,
    buyer_units_field,
    reservation_number,
    sale_keys,
)
from engine.records import ReservationRecord
from engine.sale_records import identity, room_of, to_ms
from engine.sales import Sales
from engine.scripts import SCRIPTS
from engine.waiting_room import configure
from reconciler.lag import stream_lag


async def _stop_and_drain(sales: Sales, sale_id: int, buckets: int,
                          wait_seconds: float) -> dict[str, Any]:
    """Stop admissions and wait for the reconciler to apply every event Redis wrote; the
    reservation records Redis had, in every bucket (for the report of what the rebuild
    drops)."""
    keys = all_keys(sale_id, buckets)
    states = [await sales.redis.hget(k.meta, "state") for k in keys]
    for k in keys:
        await sales.redis.hset(k.meta, "state", "repairing")
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while (await stream_lag(sales.redis, sale_id, buckets)).pending:
        if asyncio.get_running_loop().time() >= deadline:
            for k, state in zip(keys, states, strict=True):
                if state is not None and state != b"repairing":
                    await sales.redis.hset(k.meta, "state", state)
            raise Conflict(f"Sale {sale_id}: the reconciler has not applied the sale's events "
                           f"within {wait_seconds:g} s (is `flashsale reconcile` running?); "
                           "nothing was changed.")
        await asyncio.sleep(0.1)
    had: dict[str, Any] = {}
    for k in keys:
        had.update({rid.decode(): raw for rid, raw in (await sales.redis.hgetall(k.res)).items()})
    return had


async def recover_sale(sales: Sales, sale_id: int, *, force: bool = False,
                       wait_seconds: float = 30.0) -> dict[str, Any]:
    sale = await sales.get(sale_id)
    count = sale["buckets"]
    if sale["status"] == "loading":
        raise Conflict(f"Sale {sale_id} never finished loading: use `flashsale sale load-tokens`.")
    had: dict[str, Any] = {}
    if any([await sales.redis.exists(k.meta) for k in all_keys(sale_id, count)]):
        if not force:
            raise Conflict(f"Sale {sale_id} is still in Redis; nothing to recover "
                           "(`flashsale audit` checks it; `--force` rebuilds it from "
                           "Postgres anyway).")
        had = await _stop_and_drain(sales, sale_id, count, wait_seconds)
    rows = await sales.pool.fetch(
        "SELECT reservation_id, user_id, quantity, status, order_id, idempotency_key,"
        " expires_at FROM sale_reservations WHERE sale_id = $1", sale_id)
    held = sum(r["quantity"] for r in rows if r["status"] == "held")
    confirmed = sum(r["quantity"] for r in rows if r["status"] == "confirmed")
    tokens = sale["quantity"] - held - confirmed
    if tokens < 0:
        raise Conflict(f"Postgres holds {held + confirmed} units for a sale of "
                       f"{sale['quantity']}: refusing to rebuild an oversold sale.")
    # Each reservation goes back to the bucket its id names; the tokens left are spread
    # over the buckets as a new sale's are.
    in_bucket: list[list[Any]] = [[] for _ in range(count)]
    for r in rows:
        found = bucket_of_reservation(r["reservation_id"])
        in_bucket[found[1] if found and found[1] < count else 0].append(r)

    room = room_of(sale)
    if room is not None:  # the line itself is gone with Redis; buyers join again
        await configure(sales.redis, sale_id, room)
    # Bucket 0 last: its meta says the whole sale is back.
    for bucket, left in reversed(list(enumerate(shares(tokens, count)))):
        await _rebuild_bucket(sales, sale, sale_keys(sale_id, bucket), in_bucket[bucket],
                              left, count, force)
    for keys in all_keys(sale_id, count):
        if sale["status"] == "ready":
            if sale["paused_at"] is not None:  # an operator paused it: it stays paused
                await sales.redis.hset(keys.meta, "state", "paused")
        else:
            await sales.redis.hset(keys.meta, "state", "closed")
    if sale["status"] == "ready":
        await sales.redis.sadd(ACTIVE_SALES, sale_id)
    known = {r["reservation_id"] for r in rows}
    dropped = sorted(set(had) - known)
    return {"sale_id": sale_id, "tokens": tokens, "held": held, "holds": sum(
        1 for r in rows if r["status"] == "held"), "confirmed": confirmed,
        "reservations": len(rows), "forced": bool(had), "buckets": count,
        "restored_to_redis": len(known - set(had)) if had else len(known),
        "dropped_from_redis": len(dropped), "dropped_ids": dropped[:20]}


async def _rebuild_bucket(sales: Sales, sale: Any, keys: SaleKeys, rows: list[Any], tokens: int,
                          count: int, force: bool) -> None:
    """One bucket: its reservation records, holds, buyers, idempotency keys and id
    sequence first, then ``load_tokens.lua`` writes its meta (refusing if it exists)."""
    # The last id issued: the meta's seq, or the seq key of a sale still in the layout of
    # before the lean gate (recovery moves such a sale to today's layout).
    meta_seq, legacy_seq = await asyncio.gather(sales.redis.hget(keys.meta, "seq"),
                                                sales.redis.get(keys.legacy[3]))
    seq = max(int(meta_seq or 0), int(legacy_seq or 0))
    held = sum(r["quantity"] for r in rows if r["status"] == "held")
    confirmed = sum(r["quantity"] for r in rows if r["status"] == "confirmed")
    async with sales.redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.buyers, keys.holds, keys.res, keys.moves_out, keys.moves_in,
                    *keys.legacy)
        if force:
            pipe.delete(keys.meta)  # load_tokens.lua writes it again, last
        for r in rows:
            expires = to_ms(r["expires_at"])
            pipe.hset(keys.res, r["reservation_id"], ReservationRecord(
                user_id=r["user_id"], quantity=r["quantity"], state=r["status"],
                expires_ms=expires, order_id=r["order_id"]).format())
            if r["status"] == "held":
                pipe.zadd(keys.holds, {r["reservation_id"]: expires})
            if r["status"] in ("held", "confirmed"):
                pipe.hincrby(keys.buyers, buyer_units_field(r["user_id"]), r["quantity"])
            if r["idempotency_key"] is not None:
                pipe.hset(keys.buyers, buyer_key_field(r["user_id"], r["idempotency_key"]),
                          r["reservation_id"])
            seq = max(seq, reservation_number(r["reservation_id"]))
        await pipe.execute()
    answer = await SCRIPTS.load_tokens(sales.redis, keys.for_load, (
        sale["product_id"], str(sale["price"]), to_ms(sale["starts_at"]), to_ms(sale["ends_at"]),
        sale["per_user_limit"], sale["hold_seconds"] * 1000, tokens,
        tokens + held + confirmed, held, confirmed, identity(sale), seq, count))
    if answer[0] != b"ok":
        raise Conflict(f"Sale {sale['sale_id']} reappeared in Redis during the rebuild; left "
                       "as it is.")
