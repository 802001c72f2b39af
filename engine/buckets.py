"""Hot-product buckets: one sale's tokens split over K buckets on K Redis Cluster slots, so
K masters share one product's attempts (``sale create --buckets K``).

A bucket is a full copy of a sale's key set (engine/keys.py: ``sale_keys(sale, b)``) with
its share of the tokens; bucket 0 is the sale's keys as they always were (K = 1 changes
nothing) and its meta carries ``buckets`` = K. Every script runs on one bucket, unchanged.

- **Home bucket.** A buyer's attempts all go to bucket ``user_id mod K``: the per-user limit
  and idempotent replays stay exact, since all of a buyer's holds live in one bucket.
  Holds, expiry, release and confirm run in the bucket that issued the hold, which the
  reservation id names (``<sale>-<b>-<n>``).
- **Transfers.** Tokens move between buckets in two steps, with the units in transit in
  the books: ``move_out.lua`` on the donor takes m tokens and records transfer id ->
  (recipient, m) in the donor's ``moves_out``; ``move_in.lua`` on the recipient credits m
  once per transfer id (remembered in its ``moves_in``); then the donor's record is
  dropped. A crash between the steps leaves the record, and ``complete_moves`` (the
  reconciler's sweeper, every sweep) finishes it idempotently. Each bucket's books:
  ``initial_b + moved_in_b - moved_out_b = tokens_b + held_b + confirmed_b``, each side
  written by one script, so it holds at every moment; summed over buckets,
  ``initial = tokens + held + confirmed + in transit`` with
  ``in transit = sum(moved_out) - sum(moved_in)``.
- **Stealing.** A ``sold_out`` answer from the home bucket makes the gateway read every
  bucket's tokens, move half of the richest bucket's tokens home and try again (up to
  ``STEAL_ROUNDS`` times); it answers ``sold_out`` only when one read saw every bucket
  empty. So a buyer is told ``sold_out`` while tokens remain only when they were in
  transit (between the two steps of someone else's transfer: two script calls) or back
  from expiry after the read, or after ``STEAL_ROUNDS`` rounds lost to other buyers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from engine.codec import text
from engine.keys import MAX_BUCKETS, SaleKeys, sale_keys
from engine.scripts import SCRIPTS, Scripts

STEAL_ROUNDS = 3
REPLICATION_TIMEOUT = 2.0  # seconds a transfer step waits for the replicas (see move())
IN_TRANSIT_WAITS = 5  # looks again while transfers are between their steps...
IN_TRANSIT_PAUSE = 0.002  # ...this long apart (seconds)
Run = Callable[[Any, Sequence[str], Sequence[Any]], Awaitable[Any]]
# durable(key): True once the replicas of the master serving ``key`` have every write made
# there so far by this process's connection (WAIT), False after a timeout.
Durable = Callable[[str], Awaitable[bool]]


def home_bucket(user_id: int, buckets: int) -> int:
    """The bucket every attempt of ``user_id`` goes to (stable for the sale's life)."""
    return user_id % buckets


def shares(quantity: int, buckets: int) -> list[int]:
    """Tokens each bucket starts with: as even as can be, the first ones one more."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be between 1 and {MAX_BUCKETS}")
    base, extra = divmod(quantity, buckets)
    return [base + (1 if b < extra else 0) for b in range(buckets)]


def all_keys(sale_id: int, buckets: int) -> list[SaleKeys]:
    return [sale_keys(sale_id, b) for b in range(buckets)]


async def bucket_count(redis: aioredis.Redis, sale_id: int) -> int | None:
    """K of a sale from its bucket 0's meta; None when Redis has no such sale."""
    count, initial = await redis.hmget(sale_keys(sale_id).meta, "buckets", "initial")
    if initial is None:
        return None
    return int(count or 1)


async def read_tokens(redis: aioredis.Redis, keys: Sequence[SaleKeys]) -> list[int]:
    """Each bucket's tokens (one read per bucket; buckets live on several masters)."""
    raw = await asyncio.gather(*(redis.hget(k.meta, "tokens") for k in keys))
    return [int(v or 0) for v in raw]


async def move(run: Run, sale_id: int, source: int, target: int, units: int, *,
               channel: str, redis: aioredis.Redis, scripts: Scripts = SCRIPTS,
               durable: Durable | None = None) -> int:
    """Move up to ``units`` tokens from bucket ``source`` to ``target``; the units the
    recipient has now (0 when none moved, or the transfer waits for the sweeper).

    On a cluster the two buckets live on two masters, each replicated asynchronously: a
    failover that lost the donor's step after the recipient was credited would make units
    out of nothing (an oversell), and one that lost the recipient's step after the
    donor's record was dropped would lose them. So with ``durable`` each step waits for
    its master's replicas before the next: the recipient is credited only once the
    donor's step is on the donor's replicas, and the record is dropped only once the
    credit is on the recipient's. A step whose replicas do not answer in time leaves the
    record, and the sweeper finishes the transfer (``complete_moves``)."""
    donor, recipient = sale_keys(sale_id, source), sale_keys(sale_id, target)
    tid, moved = await run(scripts.move_out, donor.for_move_out, (source, target, units))
    if not moved or (durable is not None and not await durable(donor.meta)):
        return 0
    tid = text(tid)
    await run(scripts.move_in, recipient.for_move_in, (tid, moved, channel, recipient.name))
    if durable is None or await durable(recipient.meta):
        await redis.hdel(donor.moves_out, tid)
    return int(moved)


async def steal(run: Run, sale_id: int, buckets: int, home: int, *, channel: str,
                redis: aioredis.Redis, scripts: Scripts = SCRIPTS,
                durable: Durable | None = None) -> tuple[int, list[int]]:
    """Move half of the richest other bucket's tokens (at least 1) to ``home``. Returns
    (units moved, or 1 when none moved but the home bucket has tokens again; the tokens
    each bucket had when read)."""
    keys = all_keys(sale_id, buckets)
    tokens = await read_tokens(redis, keys)
    for _ in range(IN_TRANSIT_WAITS):
        if any(tokens):  # (the home bucket too: another transfer may have filled it)
            break
        # Every bucket empty, unless units are between the two steps of another transfer:
        # those reach their bucket within two script calls, so look again shortly.
        moving = await asyncio.gather(*(redis.hlen(k.moves_out) for k in keys))
        if not any(moving):
            break
        await asyncio.sleep(IN_TRANSIT_PAUSE)
        tokens = await read_tokens(redis, keys)
    donor = max((b for b in range(buckets) if b != home), key=tokens.__getitem__)
    if tokens[donor] <= 0:
        return int(tokens[home] > 0), tokens  # home refilled meanwhile: worth a retry
    moved = await move(run, sale_id, donor, home, (tokens[donor] + 1) // 2, channel=channel,
                       redis=redis, scripts=scripts, durable=durable)
    return moved, tokens


async def complete_moves(redis: aioredis.Redis, sale_id: int, buckets: int, *, channel: str,
                         scripts: Scripts = SCRIPTS,
                         timeout: float = REPLICATION_TIMEOUT) -> int:
    """Finish every transfer a crash (or a replica slow to answer) left half-done, its
    record still in the donor's ``moves_out``: once the donor's replicas have the record,
    credit the recipient (once per transfer id); once the recipient's replicas have the
    credit, drop the record (``move`` says why). Idempotent; returns the transfers
    finished."""
    finished = 0
    for source in range(buckets):
        donor = sale_keys(sale_id, source)
        records = await redis.hgetall(donor.moves_out)
        if not records or not await replicated(redis, donor.meta, timeout=timeout):
            continue
        for tid, entry in records.items():
            target, _, units = text(entry).partition(":")
            recipient = sale_keys(sale_id, int(target))
            await scripts.move_in(redis, recipient.for_move_in,
                                  (text(tid), int(units), channel, recipient.name))
            if await replicated(redis, recipient.meta, timeout=timeout):
                await redis.hdel(donor.moves_out, tid)
                finished += 1
    return finished


async def replication(redis: aioredis.Redis, key: str) -> dict:
    """``INFO replication`` of the master serving ``key``."""
    if isinstance(redis, aioredis.RedisCluster):
        return await redis.info("replication", target_nodes=redis.get_node_from_key(key))
    return await redis.info("replication")


async def replicated(redis: aioredis.Redis, key: str, *,
                     timeout: float = REPLICATION_TIMEOUT) -> bool:
    """True once every replica of the master serving ``key`` has acknowledged the
    master's replication offset as of now (every write made there so far, whoever made
    it); False after ``timeout``. Replicas acknowledge about once a second, so this is for
    the sweeper; a gateway WAITs on its own connection instead (engine/admission.py)."""
    info = await replication(redis, key)
    target = int(info.get("master_repl_offset") or 0)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
        if all(int(r.get("offset", 0)) >= target for r in replicas):
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.05)
        info = await replication(redis, key)


@dataclass(frozen=True, slots=True)
class BucketBooks:
    """One bucket's counters, read atomically (one bucket lives on one master)."""
    bucket: int
    initial: int
    moved_in: int
    moved_out: int
    tokens: int
    held: int
    confirmed: int

    @property
    def balanced(self) -> bool:
        return (self.initial + self.moved_in - self.moved_out
                == self.tokens + self.held + self.confirmed)


BUCKET_FIELDS = ("initial", "moved_in", "moved_out", "held", "confirmed", "tokens")


def bucket_of(bucket: int, fields: Sequence[Any]) -> BucketBooks | None:
    """A bucket's books from its meta's BUCKET_FIELDS; None when it has no state."""
    initial, moved_in, moved_out, held, confirmed, tokens = fields
    if initial is None:
        return None
    return BucketBooks(bucket=bucket, initial=int(initial), moved_in=int(moved_in or 0),
                       moved_out=int(moved_out or 0), tokens=int(tokens or 0),
                       held=int(held or 0), confirmed=int(confirmed or 0))


async def bucket_books(redis: aioredis.Redis, sale_id: int, bucket: int) -> BucketBooks | None:
    return bucket_of(bucket, await redis.hmget(sale_keys(sale_id, bucket).meta,
                                               *BUCKET_FIELDS))


async def in_transit_records(redis: aioredis.Redis, sale_id: int, buckets: int) -> int:
    """Units of the transfers recorded in the donors and not yet credited to their
    recipient (equal to sum(moved_out) - sum(moved_in) when nothing moves meanwhile)."""
    units = 0
    for source in range(buckets):
        for tid, entry in (await redis.hgetall(sale_keys(sale_id, source).moves_out)).items():
            target, _, moved = text(entry).partition(":")
            if not await redis.hexists(sale_keys(sale_id, int(target)).moves_in, tid):
                units += int(moved)
    return units
