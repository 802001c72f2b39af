"""Poison events: a stream entry Postgres refuses for good, or that cannot be read, is
parked in ``sale_dead_letters`` with its raw fields so the rest of the stream goes on.

Postgres errors of SQLSTATE class 22 (data exception: a NUL byte in text, a number out of
range) and 23 (integrity constraint) are about the data, so retrying cannot help; every
other failure (connection, serialization, deadlock, a bug of ours) keeps the batch and is
retried. A refused batch is bisected inside one transaction, each part under a savepoint,
until the events that fail alone are found: k poison events among n cost about
k * log2(n) extra attempts, and every other event is applied in the same commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg
import msgspec

from engine.codec import text
from engine.events import SaleEvent
from reconciler.apply import BatchResult, apply_batch

PERMANENT_CLASSES = ("22", "23")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    sale_id: int
    stream_id: str
    raw: str
    error: str
    sqlstate: str | None = None
    bucket: int = 0  # whose stream the entry came from


def is_permanent(exc: BaseException) -> bool:
    """A Postgres rejection of the data itself (retrying the same event cannot succeed)."""
    state = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError) and bool(state) and \
        state[:2] in PERMANENT_CLASSES


def raw_json(fields: dict) -> str:
    """A stream entry's fields as ASCII JSON: storable whatever bytes they hold."""
    return json.dumps({text(k, "backslashreplace"): text(v, "backslashreplace")
                       for k, v in fields.items()}, ensure_ascii=True, sort_keys=True)


async def apply_isolating(conn: asyncpg.Connection, events: list[SaleEvent],
                          raw_of: dict[tuple[int, int, str], dict]
                          ) -> tuple[BatchResult, list[DeadLetter]]:
    """Apply ``events`` in the caller's transaction, setting aside each event Postgres
    refuses permanently. Transient errors propagate (the caller keeps the batch)."""
    total = BatchResult()
    letters: list[DeadLetter] = []

    async def attempt(part: list[SaleEvent]) -> None:
        try:
            async with conn.transaction():  # a savepoint
                result = await apply_batch(conn, part)
        except asyncpg.PostgresError as exc:
            if not is_permanent(exc):
                raise
            if len(part) == 1:
                event = part[0]
                letters.append(DeadLetter(
                    event.sale_id, event.stream_id,
                    _raw(raw_of.get((event.sale_id, event.bucket, event.stream_id)), event),
                    f"{type(exc).__name__}: {exc}", exc.sqlstate, event.bucket))
                return
            middle = len(part) // 2
            await attempt(part[:middle])
            await attempt(part[middle:])
            return
        total.applied.update(result.applied)
        total.ignored += result.ignored
        total.conflicts += result.conflicts

    await attempt(events)
    return total, letters


def _raw(fields: dict | None, event: SaleEvent) -> str:
    if fields is not None:
        return raw_json(fields)
    return json.dumps(msgspec.to_builtins(event), ensure_ascii=True, sort_keys=True)


async def park(conn: asyncpg.Connection, letters: list[DeadLetter]) -> None:
    """Record dead letters (a replay after a crash before XACK records nothing twice)."""
    await conn.executemany(
        "INSERT INTO sale_dead_letters (sale_id, stream_id, raw, sqlstate, error, bucket)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sale_id, bucket, stream_id) DO NOTHING",
        [(d.sale_id, d.stream_id, d.raw, d.sqlstate, d.error[:2000].replace("\x00", "\\x00"),
          d.bucket) for d in letters])
