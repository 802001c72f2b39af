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
from enum import StrEnum
from typing import Any

import asyncpg
import msgspec

from engine.errors import CartCheckoutInProgress, IdempotencyKeyInUse, IdempotencyKeyReused
from engine.sql import Params

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


class Step(StrEnum):
    """``checkouts.step``: the last step recorded (the saga runs what follows it)."""
    STARTED = "started"  # claimed, not reserved (never committed on its own)
    RESERVED = "reserved"  # priced, stock or hold taken, ids allocated
    ORDERED = "ordered"  # authorized, hold confirmed, order written
    COMPENSATING = "compensating"  # failed: undoing, the response to give is stored
    DONE = "done"  # the response is stored; the lease is gone


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
    """A running checkout this process holds the lease of. ``plan`` is the JSON the saga
    stored with its reserve step; the store keeps it and never reads it."""
    checkout_id: int
    user_id: int
    request: CheckoutRequest
    step: Step
    lease: uuid.UUID
    executions: int
    order_id: int | None = None
    payment_id: int | None = None
    plan: dict[str, Any] | None = None
    response: Stored | None = None  # set when the checkout ends


_RECORD = "checkout_id, user_id, request, step, lease_token, executions, order_id, payment_id, plan"


def _record(row: asyncpg.Record) -> Record:
    return Record(checkout_id=row["checkout_id"], user_id=row["user_id"],
                  request=msgspec.convert(row["request"], CheckoutRequest),
                  step=Step(row["step"]), lease=row["lease_token"],
                  executions=row["executions"], order_id=row["order_id"],
                  payment_id=row["payment_id"], plan=row["plan"])


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
            arg = Params()
            taken = await self._take(conn, arg, f"checkout_id = {arg(found['checkout_id'])}")
            if not taken:
                raise IdempotencyKeyInUse()
            return taken[0]
        raise IdempotencyKeyInUse()

    async def take_lapsed(self, conn: asyncpg.Connection, limit: int) -> list[Record]:
        """Take over running checkouts whose lease ran out (recovery)."""
        arg = Params()
        return await self._take(
            conn, arg, "checkout_id IN (SELECT checkout_id FROM checkouts"
            " WHERE state = 'running' AND (lease_until IS NULL OR lease_until <= now())"
            f" ORDER BY lease_until LIMIT {arg(limit)} FOR UPDATE SKIP LOCKED)")

    async def _take(self, conn: asyncpg.Connection, arg: Params, where: str) -> list[Record]:
        """A new lease on the running, lapsed checkouts ``where`` selects (its parameters
        already in ``arg``)."""
        rows = await conn.fetch(
            "UPDATE checkouts SET lease_token = gen_random_uuid(), lease_until = now()"
            f" + make_interval(secs => {arg(self.lease_seconds)}),"
            " executions = executions + 1, updated_at = now()"
            f" WHERE {where} AND state = 'running'"
            " AND (lease_until IS NULL OR lease_until <= now())"
            f" RETURNING {_RECORD}", *arg.values)
        return [_record(r) for r in rows]

    async def advance(self, conn: asyncpg.Connection, record: Record, step: Step,
                      **columns: Any) -> None:
        """Record the next step and ``columns`` (inside the caller's transaction), renewing
        the lease; LeaseLost when another executor holds the checkout now."""
        arg = Params()
        sets = "".join(f", {name} = {arg(value)}" for name, value in columns.items())
        if not await conn.fetchval(f"WITH {self.advance_cte(record, step, arg, sets)}"
                                   " SELECT count(*) FROM c", *arg.values):
            raise LeaseLost()
        self.committed_step(record, step)

    def advance_cte(self, record: Record, step: Step, arg: Params, sets: str = "") -> str:
        """``advance`` as a CTE named ``c``, for a statement whose other parts must happen
        only if it does (``... FROM c``); call ``committed_step`` once it committed."""
        return (f"c AS (UPDATE checkouts SET step = {arg(step.value)}, lease_until = now()"
                f" + make_interval(secs => {arg(self.lease_seconds)}), updated_at = now()"
                f"{sets} WHERE checkout_id = {arg(record.checkout_id)}"
                f" AND lease_token = {arg(record.lease)}"
                " AND state = 'running' RETURNING checkout_id)")

    @staticmethod
    def committed_step(record: Record, step: Step) -> None:
        """The record follows a statement with ``advance_cte`` that committed."""
        record.step = step

    @staticmethod
    def finish_cte(record: Record, arg: Params, *, status: int, body: bytes,
                   cart_pending: bool) -> str:
        """``finish`` as a CTE named ``c``; call ``committed_finish`` once it committed."""
        state = "completed" if status < 400 else "failed"
        return (f"c AS (UPDATE checkouts SET state = {arg(state)}, step = 'done',"
                f" response_status = {arg(status)}, response_body = {arg(body.decode())},"
                f" cart_pending = {arg(cart_pending)}, lease_token = NULL,"
                " lease_until = NULL, finished_at = now(), updated_at = now()"
                f" WHERE checkout_id = {arg(record.checkout_id)}"
                f" AND lease_token = {arg(record.lease)}"
                " AND state = 'running' RETURNING checkout_id)")

    @staticmethod
    def committed_finish(record: Record, status: int, body: bytes) -> None:
        """The record follows a statement with ``finish_cte`` that committed."""
        record.step = Step.DONE
        record.response = Stored(status, body)

    async def finish(self, conn: asyncpg.Connection, record: Record, *, status: int,
                     body: bytes, cart_pending: bool = False) -> None:
        """Store the response and end the checkout (inside the caller's transaction)."""
        arg = Params()
        cte = self.finish_cte(record, arg, status=status, body=body, cart_pending=cart_pending)
        if not await conn.fetchval(f"WITH {cte} SELECT count(*) FROM c", *arg.values):
            raise LeaseLost()
        self.committed_finish(record, status, body)

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

    async def cart_done(self, conn: asyncpg.Connection | asyncpg.Pool, checkout_id: int
                        ) -> None:
        """The ordered units have left the cart: nothing is pending for this checkout."""
        await conn.execute("UPDATE checkouts SET cart_pending = false WHERE checkout_id = $1",
                           checkout_id)

    async def carts_pending(self, conn: asyncpg.Connection | asyncpg.Pool, limit: int
                            ) -> list[Record]:
        """Finished checkouts whose ordered units may still be in the cart (Redis was down
        when they ended), past the lease so that a live executor is not raced."""
        rows = await conn.fetch(
            f"SELECT {_RECORD} FROM checkouts WHERE cart_pending"
            " AND finished_at < now() - make_interval(secs => $2) ORDER BY finished_at"
            " LIMIT $1", limit, self.lease_seconds)
        return [_record(r) for r in rows]
