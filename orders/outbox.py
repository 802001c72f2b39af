"""Notifications through a transactional outbox.

Every order change writes its notification into ``outbox`` in the same transaction
(``enqueue``), so a notification exists exactly when its change committed. The
``Dispatcher`` (run by ``flashsale notify``) claims due events with a lease, hands them to
a pluggable ``Sink`` and marks them delivered: at least once, since a crash between the
delivery and the mark delivers again. Receivers deduplicate by ``event_id``. A failed
delivery is retried with exponential backoff; the later events of the same order wait for
it, so one order's notifications arrive in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import msgspec

from engine.codec import encode
from engine.sql import Params

log = logging.getLogger("flashsale.notify")

TOPICS = ("order.confirmed", "order.shipped", "order.delivered", "order.cancelled",
          "order.refunded", "order.returned",
          # written by triggers (migrations/0017_discovery.sql), for a user, not an order
          "wishlist.price_drop", "wishlist.back_in_stock")


async def enqueue(conn: asyncpg.Connection, topic: str, *, order_id: int, user_id: int,
                  data: dict[str, Any]) -> None:
    """Record a notification inside the caller's transaction."""
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}")
    await conn.execute(
        "INSERT INTO outbox (topic, order_id, user_id, payload) VALUES ($1, $2, $3, $4)",
        topic, order_id, user_id, msgspec.to_builtins(data))


def enqueue_cte(topic: str, arg: Params, *, order_id: int, user_id: int,
                data: dict[str, Any], after: str) -> str:
    """``enqueue`` as a CTE named ``x`` that writes the notification only if the CTE
    ``after`` returned a row: one statement for a change and its notification."""
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}")
    return ("x AS (INSERT INTO outbox (topic, order_id, user_id, payload)"
            f" SELECT {arg(topic)}, {arg(order_id)}, {arg(user_id)},"
            f" {arg(msgspec.to_builtins(data))} FROM {after})")


class Notification(msgspec.Struct, frozen=True):
    event_id: int
    topic: str
    order_id: int | None
    user_id: int | None
    occurred_at: datetime
    data: dict[str, Any]

    def body(self) -> bytes:
        return encode(self)


class DeliveryFailed(Exception):
    pass


class Sink(Protocol):
    async def deliver(self, note: Notification) -> None:
        """Deliver or raise DeliveryFailed (or any exception: it is retried later)."""

    async def close(self) -> None: ...


class LogFileSink:
    """Appends one JSON line per notification to a file (flushed and fsynced per batch
    item, so a line written is a line kept)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def deliver(self, note: Notification) -> None:
        await asyncio.to_thread(self._append, note.body() + b"\n")

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    async def close(self) -> None:
        return None


class WebhookSink:
    """POSTs each notification as JSON; 2xx is delivered. Retries a few times at once with
    backoff (connection errors, timeouts, 408, 429, 5xx), then leaves the event to the
    dispatcher's slower retry. With ``signing_secret``, the body's HMAC-SHA256 is sent in
    ``X-Flashsale-Signature`` so the receiver can trust it."""

    def __init__(self, url: str, *, retries: int = 3, backoff: float = 0.2,
                 timeout: float = 5.0, signing_secret: str | None = None) -> None:
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._secret = signing_secret.encode() if signing_secret else None
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, note: Notification) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body = note.body()
        headers = {"Content-Type": "application/json",
                   "X-Flashsale-Event-Id": str(note.event_id),
                   "X-Flashsale-Topic": note.topic}
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Flashsale-Signature"] = f"sha256={digest}"
        last = "no attempt"
        for attempt in range(self.retries):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self._session.post(self.url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver refuses it: no point in hammering now
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        raise DeliveryFailed(last)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(slots=True)
class DispatchReport:
    delivered: int = 0
    failed: int = 0


class Dispatcher:
    def __init__(self, *, pool: asyncpg.Pool, sink: Sink, batch: int = 100,
                 lease_seconds: float = 60.0, max_backoff: float = 600.0) -> None:
        self._pool = pool
        self.sink = sink
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.max_backoff = max_backoff

    async def run_once(self) -> DispatchReport:
        rows = await self._pool.fetch(
            "UPDATE outbox SET locked_until = now() + make_interval(secs => $2),"
            " attempts = attempts + 1 WHERE event_id IN ("
            "  SELECT event_id FROM outbox WHERE delivered_at IS NULL"
            "  AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())"
            "  ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " RETURNING event_id, topic, order_id, user_id, payload, created_at, attempts",
            self.batch, self.lease_seconds)
        report = DispatchReport()
        blocked: dict[int, tuple[float, str]] = {}  # order id -> (backoff, error)
        for row in sorted(rows, key=lambda r: r["event_id"]):
            note = Notification(event_id=row["event_id"], topic=row["topic"],
                                order_id=row["order_id"], user_id=row["user_id"],
                                occurred_at=row["created_at"], data=row["payload"])
            if row["order_id"] in blocked:
                await self._retry_later(row["event_id"], *blocked[row["order_id"]])
                continue
            try:
                await self.sink.deliver(note)
            except Exception as exc:  # any sink failure: retry later, never lose the event
                backoff = min(self.max_backoff, 2.0 ** min(row["attempts"], 20))
                error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("delivery of event %s (%s) failed: %s", note.event_id,
                            note.topic, error)
                await self._retry_later(row["event_id"], backoff, error)
                if row["order_id"] is not None:
                    blocked[row["order_id"]] = (backoff, "an earlier event of the order failed")
                report.failed += 1
                continue
            await self._pool.execute(
                "UPDATE outbox SET delivered_at = now(), locked_until = NULL, last_error = NULL"
                " WHERE event_id = $1", row["event_id"])
            report.delivered += 1
        return report

    async def _retry_later(self, event_id: int, backoff: float, error: str) -> None:
        await self._pool.execute(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2),"
            " locked_until = NULL, last_error = $3 WHERE event_id = $1",
            event_id, backoff, error)

    async def run(self, stop: asyncio.Event, *, interval: float = 0.5) -> None:
        """Deliver until ``stop`` is set; outages are logged and waited out."""
        while not stop.is_set():
            try:
                report = await self.run_once()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox unavailable: %s", exc)
                report = DispatchReport()
            if report.delivered + report.failed < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        await self.sink.close()

    async def pending(self) -> int:
        return await self._pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
