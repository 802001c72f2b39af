"""What the reconciler set aside for an operator, and what the operator does about it
(``flashsale sale parked``): events Postgres refused for good (dead letters,
reconciler/deadletter.py) and events naming a reservation id another buyer holds
(conflicts, reconciler/apply.py).

- **Retry** a sale's dead letters once their cause is fixed (a constraint, a trigger, a
  missing row): each is applied through the reconciler's own ``apply_batch``, in its own
  transaction with its row locked, and marked resolved in that same transaction, so two
  operators retrying at once apply each letter once. Applying is idempotent (a state
  already further along ignores an older event), so a letter whose reservation moved on
  meanwhile changes nothing. A letter Postgres still refuses keeps its row, with the new
  error. An entry that could not be read is not retried: its raw fields were stored with
  bytes that are not UTF-8 escaped, so they are not the entry any more.
- **Resolve** letters or conflicts accounted for by hand, with a reason.

Rows are never deleted: a resolved row leaves the audit and the dead-letter gauge and
stays as the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from engine.errors import NotFound, ValidationFailed
from engine.events import SaleEvent
from reconciler.apply import apply_batch, stream_id_key
from reconciler.deadletter import is_permanent

UNREADABLE = "unreadable entry"  # how the consumer's error text for such an entry starts


@dataclass(frozen=True, slots=True)
class ParkedItem:
    ref: str  # d<dead_letter_id> or c<conflict_id>
    kind: str  # dead_letter | conflict
    sale_id: int
    bucket: int
    stream_id: str
    parked_at: datetime
    why: str  # Postgres's error, the reader's, or whose the reservation id is
    event: str  # the entry's fields (a dead letter, as stored) or what it said (a conflict)
    retryable: bool
    resolved_at: datetime | None = None
    resolution: str | None = None


@dataclass
class RetryReport:
    sale_id: int
    applied: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # ref -> Postgres's new error
    skipped: dict[str, str] = field(default_factory=dict)  # ref -> why not retried

    @property
    def ok(self) -> bool:
        return not self.refused and not self.skipped


def _letter(row: asyncpg.Record) -> ParkedItem:
    unreadable = row["sqlstate"] is None and row["error"].startswith(UNREADABLE)
    return ParkedItem(
        ref=f"d{row['dead_letter_id']}", kind="dead_letter", sale_id=row["sale_id"],
        bucket=row["bucket"], stream_id=row["stream_id"], parked_at=row["created_at"],
        why=row["error"], event=row["raw"], retryable=not unreadable,
        resolved_at=row["resolved_at"], resolution=row["resolution"])


def _conflict(row: asyncpg.Record) -> ParkedItem:
    return ParkedItem(
        ref=f"c{row['conflict_id']}", kind="conflict", sale_id=row["sale_id"],
        bucket=row["bucket"], stream_id=row["stream_id"], parked_at=row["detected_at"],
        why=(f"Postgres has reservation {row['reservation_id']} for user "
             f"{row['known_user_id']} x {row['known_quantity']}"),
        event=(f"{row['event_type']} {row['reservation_id']} for user {row['user_id']} x "
               f"{row['quantity']}"),
        retryable=False, resolved_at=row["resolved_at"], resolution=row["resolution"])


async def parked_items(pool: asyncpg.Pool, sale_id: int, *, resolved: bool = False
                       ) -> list[ParkedItem]:
    """The sale's dead letters and conflicts in stream order; ``resolved``: those already
    dealt with too."""
    only_open = "" if resolved else " AND resolved_at IS NULL"
    letters = await pool.fetch(
        "SELECT * FROM sale_dead_letters WHERE sale_id = $1" + only_open, sale_id)
    conflicts = await pool.fetch(
        "SELECT * FROM sale_event_conflicts WHERE sale_id = $1" + only_open, sale_id)
    items = [*map(_letter, letters), *map(_conflict, conflicts)]
    return sorted(items, key=lambda i: (i.bucket, stream_id_key(i.stream_id), i.ref))


async def retry_dead_letters(pool: asyncpg.Pool, sale_id: int,
                             progress: Callable[[int, int], None] | None = None
                             ) -> RetryReport:
    """Apply the sale's unresolved dead letters again, in stream order (module docstring).
    ``progress(done, total)`` after each."""
    report = RetryReport(sale_id)
    letters = [i for i in await parked_items(pool, sale_id) if i.kind == "dead_letter"]
    async with pool.acquire() as conn:
        for done, item in enumerate(letters, 1):
            if not item.retryable:
                report.skipped[item.ref] = ("its entry could not be read; account for it "
                                            "and resolve it by hand")
            else:
                await _retry_one(conn, item, report)
            if progress is not None:
                progress(done, len(letters))
    return report


async def _retry_one(conn: asyncpg.Connection, item: ParkedItem, report: RetryReport) -> None:
    letter_id = int(item.ref[1:])
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT raw, resolved_at FROM sale_dead_letters WHERE dead_letter_id = $1"
                " FOR UPDATE", letter_id)
            if row is None or row["resolved_at"] is not None:
                return  # another operator's retry or resolve got there first
            fields = {k.encode(): v.encode() for k, v in json.loads(row["raw"]).items()}
            event = SaleEvent.from_stream(item.sale_id, item.stream_id, fields, item.bucket)
            result = await apply_batch(conn, [event])
            outcome = ("applied on retry" if result.applied else
                       "retried: recorded as a conflict" if result.conflicts else
                       "retried: the reservation had moved on; nothing to change")
            await conn.execute(
                "UPDATE sale_dead_letters SET resolved_at = now(), resolution = $2"
                " WHERE dead_letter_id = $1", letter_id, outcome)
        report.applied.append(item.ref)
    except (ValueError, UnicodeError) as exc:
        report.skipped[item.ref] = f"its entry does not read as an event: {exc}"
    except asyncpg.PostgresError as exc:
        if not is_permanent(exc):
            raise
        error = f"{type(exc).__name__}: {exc}"[:2000].replace("\x00", "\\x00")
        await conn.execute("UPDATE sale_dead_letters SET error = $2, sqlstate = $3"
                           " WHERE dead_letter_id = $1", letter_id, error, exc.sqlstate)
        report.refused[item.ref] = error


async def resolve(pool: asyncpg.Pool, sale_id: int, refs: list[str], reason: str
                  ) -> list[str]:
    """Mark dead letters (``d<id>``) and conflicts (``c<id>``) of the sale resolved by
    hand, with ``reason``; the refs that were still open (ValidationFailed for a ref that
    is not one, NotFound for one of another sale or none)."""
    tables = {"d": ("sale_dead_letters", "dead_letter_id"),
              "c": ("sale_event_conflicts", "conflict_id")}
    wanted: list[tuple[str, str, str, int]] = []
    for ref in refs:
        kind, number = ref[:1], ref[1:]
        if kind not in tables or not number.isdigit() or len(number) > 18:
            raise ValidationFailed(f"{ref!r} names no parked event: d<id> for a dead "
                                   "letter, c<id> for a conflict.")
        wanted.append((ref, *tables[kind], int(number)))
    if not reason.strip():
        raise ValidationFailed("Say why: the reason is the record of what was done.")
    newly: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        for ref, table, column, number in wanted:
            row = await conn.fetchrow(
                f"SELECT resolved_at FROM {table} WHERE {column} = $1 AND sale_id = $2"
                " FOR UPDATE", number, sale_id)
            if row is None:
                raise NotFound(f"Sale {sale_id} has no parked event {ref}.")
            if row["resolved_at"] is None:
                await conn.execute(f"UPDATE {table} SET resolved_at = now(), resolution = $2"
                                   f" WHERE {column} = $1", number, f"by hand: {reason}")
                newly.append(ref)
    return newly
