"""How far Postgres is behind a sale's stream: entries not yet applied, and the age of the
oldest of them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.codec import text
from engine.keys import CONSUMER_GROUP, sale_keys, sale_streams
from reconciler.apply import stream_id_key


@dataclass(frozen=True, slots=True)
class Lag:
    pending: int  # delivered to a reconciler but not acknowledged, plus not yet delivered
    oldest_age_seconds: float

    def as_dict(self) -> dict:
        return {"pending": self.pending, "oldest_age_seconds": round(self.oldest_age_seconds, 3)}


def _age(stream_id: str) -> float:
    return max(0.0, time.time() - stream_id_key(stream_id)[0] / 1000)


async def stream_lag(redis: aioredis.Redis, sale_id: int, buckets: int | None = None) -> Lag:
    """Over every stream of the sale (one per bucket; ``buckets`` read from Redis when
    not given): entries pending, and the oldest one's age."""
    if buckets is None:
        buckets = int(await redis.hget(sale_keys(sale_id).meta, "buckets") or 1)
    lags = [await _lag(redis, stream) for stream in sale_streams(sale_id, buckets)]
    return Lag(sum(lag.pending for lag in lags), max(lag.oldest_age_seconds for lag in lags))


async def _lag(redis: aioredis.Redis, stream: str) -> Lag:
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream at all
        return Lag(0, 0.0)
    group = next((g for g in groups if text(g["name"]) == CONSUMER_GROUP), None)
    if group is None:  # no reconciler has looked yet: every entry is waiting
        first = await redis.xrange(stream, count=1)
        count = await redis.xlen(stream)
        return Lag(count, _age(text(first[0][0])) if first else 0.0)
    last = text(group["last-delivered-id"])
    undelivered = group.get("lag")
    after = await redis.xrange(stream, min="(" + last, count=1)
    if undelivered is None:
        undelivered = len(await redis.xrange(stream, min="(" + last, count=100_000))
    pending = int(group["pending"])
    oldest = 0.0
    oldest_pending = (await redis.xpending(stream, CONSUMER_GROUP))["min"] if pending else None
    if oldest_pending is not None:  # (acknowledged meanwhile: None)
        oldest = _age(text(oldest_pending))
    elif after:
        oldest = _age(text(after[0][0]))
    return Lag(pending + int(undelivered), oldest)
