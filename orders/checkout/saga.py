"""The checkout saga's driver: a cart or a flash-sale hold becomes a paid order, or
nothing at all.

The steps, each recorded in ``checkouts.step`` in the same transaction (or statement)
as its effects; the step recorded says what runs next:

    recorded      runs next                                    module
    started       reserve: validate, price, take stock or      plan.py
                  check the hold, redeem the coupon, allocate
                  the order and payment (in the claim's
                  transaction, so a failure leaves nothing)
    reserved      authorize_and_order: authorize, confirm the  pay.py
                  hold (confirm.lua), write the order
                  (cash on delivery: placed, and done)
    ordered       capture_and_settle: capture, the units       pay.py, cart_cleanup.py
                  leave the cart, the order paid, notify
    compensating  unwind: every effect above by its inverse    compensate.py
    done          the stored response is the answer

A business failure after ``started`` (declined, hold expired or released, capture
refused, the order write refused) records ``compensating`` with the response to give
(``compensate.begin``). A transient failure (Postgres, Redis or the provider unreachable)
leaves the step as recorded and answers 503: every step is idempotent (provider calls
are keyed by the payment reference, confirm.lua by the order id), so the client's retry
with the same key, or ``recover_incomplete`` once the lease has run out, resumes from the
recorded step and ends it completed or compensated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from engine import metrics
from engine.admission import Admission
from engine.sales import Sales
from orders.cart import Carts
from orders.checkout import cart_cleanup, compensate, pay, plan
from orders.checkout.state import FaultHook, Saga, Services, transient
from orders.idempotency import CheckoutRequest, IdempotencyStore, LeaseLost, Record, Step, Stored
from orders.payments import Payments
from orders.pricing import PricingRules
from orders.txn import retrying

log = logging.getLogger("flashsale.checkout")

# recorded step -> the step that runs next (each records the step after it), and what
# undoes it when a later business failure sends the checkout to compensation
NEXT: dict[Step, Callable[[Services, Saga], Awaitable[None]]] = {
    # (reserve, in the claim: undone by stock put back, coupon released, payment voided)
    Step.RESERVED: pay.authorize_and_order,  # undone by: void, hold released, order cancelled
    Step.ORDERED: pay.capture_and_settle,  # undone by: refund, order cancelled
    Step.COMPENSATING: compensate.unwind,  # the undoing itself: retried, never compensated
}


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    status: int
    body: bytes
    replayed: bool = False


@dataclass(slots=True)
class RecoveryReport:
    completed: int = 0
    failed: int = 0
    dropped: int = 0  # never got past validation: forgotten, the key is free
    pending: int = 0  # still blocked by an outage; tried again next time
    carts_cleared: int = 0


class Checkout:
    def __init__(self, *, pool: asyncpg.Pool, rules: PricingRules, admission: Admission,
                 sales: Sales, carts: Carts, payments: Payments, lease_seconds: float = 15.0,
                 fault: FaultHook | None = None) -> None:
        self._pool = pool
        self._store = IdempotencyStore(lease_seconds=lease_seconds)
        self._svc = Services(pool=pool, rules=rules, admission=admission, sales=sales,
                             carts=carts, payments=payments, store=self._store, at=self._at)
        self.fault = fault  # fault injection (tests): awaited at each step boundary
        self._running: set[asyncio.Task] = set()

    # -- entry points --------------------------------------------------------------------
    async def place(self, user_id: int, request: CheckoutRequest) -> CheckoutResult:
        started = time.perf_counter()
        # A client that hangs up must not stop the saga between two steps.
        task = asyncio.ensure_future(self._place(user_id, request))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        finally:
            metrics.CHECKOUT_DURATION.observe(time.perf_counter() - started)

    async def _place(self, user_id: int, request: CheckoutRequest) -> CheckoutResult:
        async with self._pool.acquire() as conn:
            claimed = await retrying(lambda: self._claim(conn, user_id, request))
        if isinstance(claimed, Stored):
            return CheckoutResult(200 if claimed.status == 201 else claimed.status,
                                  claimed.body, replayed=True)
        await self._at("after_reserve", claimed.record)
        return await self._drive(claimed)

    async def _claim(self, conn: asyncpg.Connection, user_id: int, request: CheckoutRequest
                     ) -> Saga | Stored:
        """One transaction: claim the key, then the reserve step. A failure before the
        commit leaves nothing behind, not even the key (validation failures are not
        stored); a concurrent request with the same key waits on the key's index entry
        for the outcome, then gets the stored response or 409."""
        async with conn.transaction():
            claimed = await self._store.claim(conn, user_id, request)
            if isinstance(claimed, Stored):
                return claimed
            if claimed.step != Step.STARTED:  # a dead executor's checkout: resume it
                return Saga.resume(claimed)
            return await plan.reserve(self._svc, conn, claimed)

    async def recover_incomplete(self, *, limit: int = 100) -> RecoveryReport:
        """Resume every running checkout whose executor died (its lease ran out): the
        gateway calls this at start-up and periodically."""
        report = RecoveryReport()
        async with self._pool.acquire() as conn:
            records = await self._store.take_lapsed(conn, limit)
        for record in records:
            if record.step == Step.STARTED:
                async with self._pool.acquire() as conn:
                    await self._store.drop(conn, record)
                report.dropped += 1
                continue
            log.info("resuming checkout %s from step %s", record.checkout_id, record.step)
            try:
                result = await self._drive(Saga.resume(record))
            except Exception as exc:  # an outage or a lost lease: the next pass retries
                if not (transient(exc) or isinstance(exc, LeaseLost)):
                    log.exception("checkout %s could not be resumed", record.checkout_id)
                report.pending += 1
                continue
            if result.status < 400:
                report.completed += 1
            else:
                report.failed += 1
        report.carts_cleared = await cart_cleanup.clear_pending(self._svc, limit)
        return report

    async def wait_idle(self) -> None:
        """Let the sagas in flight finish (at shutdown)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- the saga ------------------------------------------------------------------------
    async def _drive(self, saga: Saga) -> CheckoutResult:
        """Run a reserved checkout from its recorded step to its end."""
        record = saga.record
        while record.step != Step.DONE:
            step = record.step
            run_next = NEXT.get(step)
            if run_next is None:
                raise RuntimeError(f"checkout {record.checkout_id} is at step {step}")
            try:
                await run_next(self._svc, saga)
            except LeaseLost:
                raise
            except Exception as exc:
                if transient(exc) or step == Step.COMPENSATING:
                    if not transient(exc):
                        log.exception("checkout %s: compensation failed", record.checkout_id)
                    await self._quietly(self._store.let_go, record)
                    raise
                await compensate.begin(self._svc, saga, exc)
        response = record.response
        return CheckoutResult(response.status, response.body)

    async def _at(self, point: str, record: Record) -> None:
        if self.fault is not None:
            await self.fault(point, record)

    async def _quietly(self, action: Callable[..., Awaitable[None]], record: Record) -> None:
        """Best effort (the database may be what just failed); the lease runs out anyway."""
        try:
            async with self._pool.acquire() as conn:
                await action(conn, record)
        except Exception as exc:
            log.warning("checkout %s: %s skipped: %s", record.checkout_id, action.__name__, exc)
