"""Stream reads and trims the consumer makes, where one server and a Redis Cluster differ
or one stream at a time is the unit."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from engine.codec import text
from engine.keys import CONSUMER_GROUP
from reconciler import metrics
from reconciler.apply import stream_id_key

log = logging.getLogger("flashsale.reconciler")


async def read_by_slot(redis: aioredis.RedisCluster, consumer: str, streams: dict[str, str],
                       *, count: int, idle_wait: float) -> list:
    """XREADGROUP on a Redis Cluster: one call per slot (a call cannot name keys of two
    slots), all sent at once as one pipeline per master, each with the COUNT one call
    would have had (per stream, so every stream keeps its share of a batch). A call that
    fails on its own (its master gone) is skipped this round, the others are read; a
    stream whose group vanished raises NOGROUP as on one server; when the pipeline itself
    raises, or every call fails, the round is retried with backoff. No BLOCK across
    slots: an empty round waits ``idle_wait`` seconds."""
    by_slot: dict[int, dict[str, str]] = {}
    for stream, last in streams.items():
        by_slot.setdefault(key_slot(stream.encode()), {})[stream] = last
    async with redis.pipeline(transaction=False) as pipe:
        for group in by_slot.values():
            pipe.xreadgroup(CONSUMER_GROUP, consumer, group, count=count)
        answers = await pipe.execute(raise_on_error=False)
    reply: list = []
    failures: list[Exception] = []
    for answer in answers:
        if isinstance(answer, Exception):
            failures.append(answer)
        else:
            reply += answer or []
    for exc in failures:
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            raise exc
    if failures:
        if len(failures) == len(answers):
            raise failures[0]
        metrics.REDIS_ERRORS.inc()
        log.warning("%d of %d slots could not be read (%s); reading the others",
                    len(failures), len(answers), failures[0])
    if not reply:
        await asyncio.sleep(idle_wait)
    return reply


async def trim_acknowledged(redis: aioredis.Redis, stream: str) -> None:
    """Drop entries of ``stream`` every group has acknowledged (and so Postgres has
    committed)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return
    if not groups:
        return  # no reader yet: keep everything
    floor = None
    for group in groups:
        # Entries up to last-delivered-id are acknowledged unless still pending.
        if group["pending"]:
            candidate = text((await redis.xpending(stream, group["name"]))["min"])
        else:
            ms, seq = stream_id_key(text(group["last-delivered-id"]))
            candidate = f"{ms}-{seq + 1}"
        if floor is None or stream_id_key(candidate) < stream_id_key(floor):
            floor = candidate
    if floor:
        await redis.xtrim(stream, minid=floor, approximate=False)

