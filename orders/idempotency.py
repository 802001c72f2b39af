"""Idempotent checkout with Stripe's semantics, on the ``checkouts`` table.

The key is scoped to the user. The first request stores its fingerprint (sha256 of the
canonical body) and, when it ends, its response. Then:
- same key, same body, finished -> the stored response, replayed verbatim;
- same key, different body -> 422 ``idempotency_key_reused``;
- same key while the first is still running -> 409 ``idempotency_key_in_use``;
- a request that failed validation before any side effect stores nothing: the key is
  claimed in the same transaction as the reserve step, so a failure before its commit
  leaves no row and the key may be used again. A concurrent request with the same key
  waits on the key's unique index entry for that transaction's outcome.
- a cart checkout while another key's checkout of the same user's cart runs (or has
  not taken its units out of the cart yet) -> 409 ``conflict``: a partial unique index
  allows one such checkout per user, so the rule holds across processes and machines.

A running checkout is owned through a lease (a random token and an expiry, renewed at
every step). When its executor dies, the lease runs out and the next request with the
same key, or the recovery loop, takes the checkout over and resumes it from its recorded
step. Every step write is conditional on the lease token, so an executor that lost its
lease can never write over the one that took it. Records are kept for good: a key that
created an order can never create another.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from engine.errors import CartCheckoutInProgress, IdempotencyKeyInUse, IdempotencyKeyReused

ONE_CART_CHECKOUT = "checkouts_one_cart_key"  # migrations/0011_hostile_clients.sql


class CheckoutRequest(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str
    shipping_address_id: int
    payment_method_id: int
    reservation_id: str | None = None
    coupon_code: str | None = None

    @property
    def kind(self) -> str:
        return "flash" if self.reservation_id is not None else "cart"


def fingerprint(request: CheckoutRequest) -> str:
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()


class LeaseLost(IdempotencyKeyInUse):
    """Another executor took this checkout over (ours looked dead): stop, touch nothing."""
    message = "This checkout is being completed by another request."


@dataclass(frozen=True, slots=True)
class Stored:
    """A finished checkout's response."""
    status: int
    body: bytes


@dataclass(slots=True)
class Record:
    """A running checkout this process holds the lease of."""
    checkout_id: int
    user_id: int
    request: CheckoutRequest
    step: str
    lease: uuid.UUID
    executions: int
    order_id: int | None = None
    payment_id: int | None = None
    plan: Any = None  # the priced plan: JSON from the row, or orders.checkout.Plan
    response: Stored | None = None  # set when the checkout ends
    view: Any = None  # the order as this executor wrote it (orders.views.OrderView)


_RECORD = "checkout_id, user_id, request, step, lease_token, executions, order_id, payment_id, plan"


def _record(row: asyncpg.Record) -> Record:
    return Record(checkout_id=row["checkout_id"], user_id=row["user_id"],
                  request=msgspec.convert(row["request"], CheckoutRequest), step=row["step"],
                  lease=row["lease_token"], executions=row["executions"],
                  order_id=row["order_id"], payment_id=row["payment_id"], plan=row["plan"])


class IdempotencyStore:
    def __init__(self, *, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds

    async def claim(self, conn: asyncpg.Connection, user_id: int,
                    request: CheckoutRequest) -> Record | Stored:
        """Start a checkout, take over one whose executor died, or answer from the record."""
        digest = fingerprint(request)
        for _ in range(5):  # the row vanished under us (its claim rolled back): try again
            cart_busy = False
            try:
                async with conn.transaction():  # a savepoint: the lookup below may follow
                    row = await conn.fetchrow(
                        "INSERT INTO checkouts (user_id, idempotency_key, fingerprint,"
                        " request, kind, lease_token, lease_until) VALUES ($1, $2, $3, $4,"
                        " $5, $6, now() + make_interval(secs => $7))"
                        " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
                        f" RETURNING {_RECORD}",
                        user_id, request.idempotency_key, digest, msgspec.to_builtins(request),
                        request.kind, uuid.uuid4(), self.lease_seconds)
            except asyncpg.UniqueViolationError as exc:
                # A cart checkout of this user runs (any process): the index entry made us
                # wait for its reserve step. It may be this very key's, when its insert
                # reached that index first: the key's row, looked up next, tells.
                if exc.constraint_name != ONE_CART_CHECKOUT:
                    raise
                row, cart_busy = None, True
            if row is not None:
                return _record(row)
            found = await conn.fetchrow(
                "SELECT checkout_id, fingerprint, state, response_status, response_body,"
                " lease_until IS NULL OR lease_until <= now() AS lapsed"
                " FROM checkouts WHERE user_id = $1 AND idempotency_key = $2",
                user_id, request.idempotency_key)
            if found is None:
                if cart_busy:
                    raise CartCheckoutInProgress()
                continue
            if found["fingerprint"] != digest:
                raise IdempotencyKeyReused(details={"idempotency_key": request.idempotency_key})
            if found["state"] != "running":
                return Stored(found["response_status"], found["response_body"].encode())
            if not found["lapsed"]:
                raise IdempotencyKeyInUse()
            taken = await self._take(conn, "checkout_id = $1", found["checkout_id"])
            if not taken:
                raise IdempotencyKeyInUse()
            return taken[0]
        raise IdempotencyKeyInUse()

    async def take_lapsed(self, conn: asyncpg.Connection, limit: int) -> list[Record]:
        """Take over running checkouts whose lease ran out (recovery)."""
        return await self._take(
            conn, "checkout_id IN (SELECT checkout_id FROM checkouts WHERE state = 'running'"
            " AND (lease_until IS NULL OR lease_until <= now()) ORDER BY lease_until"
            f" LIMIT {int(limit)} FOR UPDATE SKIP LOCKED)")

    async def _take(self, conn: asyncpg.Connection, where: str, *args: Any) -> list[Record]:
        n = len(args)
        rows = await conn.fetch(
            "UPDATE checkouts SET lease_token = gen_random_uuid(), lease_until = now()"
            f" + make_interval(secs => ${n + 1}), executions = executions + 1,"
            f" updated_at = now() WHERE {where} AND state = 'running'"
            " AND (lease_until IS NULL OR lease_until <= now())"
            f" RETURNING {_RECORD}", *args, self.lease_seconds)
        return [_record(r) for r in rows]

    async def advance(self, conn: asyncpg.Connection, record: Record, step: str,
                      sets: str = "", *args: Any) -> None:
        """Record the next step (inside the caller's transaction), renewing the lease;
        LeaseLost when another executor holds the checkout now."""
        n = len(args)
        done = await conn.fetchval(
            f"UPDATE checkouts SET step = ${n + 3}, lease_until = now()"
            f" + make_interval(secs => ${n + 4}), updated_at = now(){sets}"
            f" WHERE checkout_id = ${n + 1} AND lease_token = ${n + 2} AND state = 'running'"
            " RETURNING 1", *args, record.checkout_id, record.lease, step, self.lease_seconds)
        if done is None:
            raise LeaseLost()
        record.step = step

    def advance_cte(self, record: Record, step: str, first: int) -> tuple[str, list[Any]]:
        """``advance`` as a CTE named ``c`` (parameters from ``$first``), for a statement
        whose other parts must happen only if it does (``... FROM c``)."""
        n = first
        return (f"c AS (UPDATE checkouts SET step = ${n}, lease_until = now()"
                f" + make_interval(secs => ${n + 1}), updated_at = now()"
                f" WHERE checkout_id = ${n + 2} AND lease_token = ${n + 3}"
                " AND state = 'running' RETURNING checkout_id)",
                [step, self.lease_seconds, record.checkout_id, record.lease])

    def finish_cte(self, record: Record, *, status: int, body: bytes, cart_pending: bool,
                   first: int) -> tuple[str, list[Any]]:
        """``finish`` as a CTE named ``c``; call ``finished`` once it committed."""
        n = first
        return (f"c AS (UPDATE checkouts SET state = ${n}, step = 'done',"
                f" response_status = ${n + 1}, response_body = ${n + 2},"
                f" cart_pending = ${n + 3}, lease_token = NULL, lease_until = NULL,"
                " finished_at = now(), updated_at = now()"
                f" WHERE checkout_id = ${n + 4} AND lease_token = ${n + 5}"
                " AND state = 'running' RETURNING checkout_id)",
                ["completed" if status < 400 else "failed", status, body.decode(), cart_pending,
                 record.checkout_id, record.lease])

    @staticmethod
    def finished(record: Record, status: int, body: bytes) -> None:
        record.step = "done"
        record.response = Stored(status, body)

    async def finish(self, conn: asyncpg.Connection, record: Record, *, status: int,
                     body: bytes, cart_pending: bool = False) -> None:
        """Store the response and end the checkout (inside the caller's transaction)."""
        cte, args = self.finish_cte(record, status=status, body=body,
                                    cart_pending=cart_pending, first=1)
        if not await conn.fetchval(f"WITH {cte} SELECT count(*) FROM c", *args):
            raise LeaseLost()
        self.finished(record, status, body)

    async def drop(self, conn: asyncpg.Connection, record: Record) -> None:
        """Forget a checkout recorded as ``started``: nothing was done for it (claims
        commit with the reserve step, so only a hand-made or older row is in this state)."""
        await conn.execute(
            "DELETE FROM checkouts WHERE checkout_id = $1 AND lease_token = $2"
            " AND step = 'started'", record.checkout_id, record.lease)

    async def let_go(self, conn: asyncpg.Connection, record: Record) -> None:
        """End our lease now (after a transient failure) so the client's retry, or
        recovery, resumes the checkout at once."""
        await conn.execute(
            "UPDATE checkouts SET lease_until = now() WHERE checkout_id = $1"
            " AND lease_token = $2 AND state = 'running'", record.checkout_id, record.lease)
