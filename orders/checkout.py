"""The checkout saga: a cart or a flash-sale hold becomes a paid order, or nothing at all.

Steps, each recorded in ``checkouts.step`` in the same transaction as its Postgres effects:

    started   validate and price (address, payment method, cart lines re-priced from
              Postgres or the hold's sale price, coupon, tax, shipping)
    reserved  one transaction: stock taken (cart: conditional updates in product order),
              coupon redeemed, order id allocated, payment row, the priced plan
              -> authorize the payment -> confirm the hold (flash, confirm.lua)
    ordered   one statement: order, items, first tracking event, payment authorized
              (cash on delivery ends here: the order is ``placed``)
              -> capture -> the ordered units leave the cart (once per checkout)
    done      one statement: order paid, tracking event, outbox notification, the
              response stored

A business failure after ``started`` (declined, hold expired or released, capture refused,
the order write refused) moves to ``compensating``, with the response to give, and
undoes in reverse: void or refund the payment, release the hold, put the stock and the
coupon back, cancel the order row if written. A transient failure (Postgres, Redis or the
provider unreachable) leaves the step as recorded and answers 503: every step is
idempotent (provider calls are keyed by the payment reference, confirm.lua by the order
id), so the client's retry with the same key, or ``recover_incomplete`` once the lease
has run out, resumes from the recorded step and ends it completed or compensated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import msgspec

from engine import metrics
from engine.admission import Admission
from engine.codec import encode, error_body
from engine.errors import (
    Conflict,
    FlashsaleError,
    NotFound,
    Unavailable,
    as_unavailable,
)
from engine.sales import Sales
from orders import basket, outbox
from orders.basket import PlanLine
from orders.cart import Carts
from orders.coupons import Coupons
from orders.idempotency import CheckoutRequest, IdempotencyStore, LeaseLost, Record, Stored
from orders.payments import Payment, Payments
from orders.pricing import ZERO, PricingRules, quote
from orders.tasks import restock
from orders.txn import retrying
from orders.views import (
    OrderEventView,
    OrderItemView,
    OrderView,
    PaymentView,
    load_view,
)

log = logging.getLogger("flashsale.checkout")

FaultHook = Callable[[str, Record], Awaitable[None]]


class Plan(msgspec.Struct, frozen=True):
    """Everything priced and allocated at the reserve step; later steps only execute it."""
    order_id: int
    payment_id: int
    method: str  # card | wallet | cod
    lines: list[PlanLine]
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    shipping_fee: Decimal
    total: Decimal
    currency: str
    shipping_address_id: int
    payment_method_id: int
    coupon_code: str | None = None
    reservation_id: str | None = None


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


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable) or as_unavailable(exc) is not None


def _plan(record: Record) -> Plan:
    if not isinstance(record.plan, Plan):
        record.plan = msgspec.convert(record.plan, Plan, strict=False)
    return record.plan


class Checkout:
    def __init__(self, *, pool: asyncpg.Pool, rules: PricingRules, admission: Admission,
                 sales: Sales, carts: Carts, payments: Payments, lease_seconds: float = 15.0,
                 fault: FaultHook | None = None) -> None:
        self._pool = pool
        self._rules = rules
        self._admission = admission
        self._sales = sales
        self._carts = carts
        self._payments = payments
        self._store = IdempotencyStore(lease_seconds=lease_seconds)
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
            claimed, token = await retrying(lambda: self._claim(conn, user_id, request))
        if isinstance(claimed, Stored):
            return CheckoutResult(200 if claimed.status == 201 else claimed.status,
                                  claimed.body, replayed=True)
        await self._at("after_reserve", claimed)
        return await self._drive(claimed, token)

    async def _claim(self, conn: asyncpg.Connection, user_id: int, request: CheckoutRequest
                     ) -> tuple[Record | Stored, str | None]:
        """One transaction: claim the key, validate and price, reserve. A failure before the
        commit leaves nothing behind, not even the key (validation failures are not
        stored); a concurrent request with the same key waits on the key's index entry
        for the outcome, then gets the stored response or 409."""
        async with conn.transaction():
            claimed = await self._store.claim(conn, user_id, request)
            if isinstance(claimed, Stored) or claimed.step != "started":
                return claimed, None  # answered, or a dead executor's checkout to resume
            return claimed, await self._start(conn, claimed)

    async def recover_incomplete(self, *, limit: int = 100) -> RecoveryReport:
        """Resume every running checkout whose executor died (its lease ran out): the
        gateway calls this at start-up and periodically."""
        report = RecoveryReport()
        async with self._pool.acquire() as conn:
            records = await self._store.take_lapsed(conn, limit)
        for record in records:
            if record.step == "started":
                async with self._pool.acquire() as conn:
                    await self._store.drop(conn, record)
                report.dropped += 1
                continue
            log.info("resuming checkout %s from step %s", record.checkout_id, record.step)
            try:
                result = await self._drive(record)
            except Exception as exc:  # an outage or a lost lease: the next pass retries
                if not (_transient(exc) or isinstance(exc, LeaseLost)):
                    log.exception("checkout %s could not be resumed", record.checkout_id)
                report.pending += 1
                continue
            if result.status < 400:
                report.completed += 1
            else:
                report.failed += 1
        report.carts_cleared = await self._clear_pending_carts(limit)
        return report

    async def wait_idle(self) -> None:
        """Let the sagas in flight finish (at shutdown)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- the saga ------------------------------------------------------------------------
    async def _drive(self, record: Record, token: str | None = None) -> CheckoutResult:
        """Run a reserved checkout from its recorded step to its end."""
        while record.step != "done":
            step = record.step
            try:
                if step == "reserved":
                    await self._pay(record, _plan(record), token)
                elif step == "ordered":
                    await self._settle(record, _plan(record))
                elif step == "compensating":
                    await self._unwind(record, _plan(record))
                else:
                    raise RuntimeError(f"checkout {record.checkout_id} is at step {step}")
            except LeaseLost:
                raise
            except Exception as exc:
                if _transient(exc) or step == "compensating":
                    if not _transient(exc):
                        log.exception("checkout %s: compensation failed", record.checkout_id)
                    await self._quietly(self._store.let_go, record)
                    raise
                await self._begin_compensation(record, exc)
        response = record.response
        return CheckoutResult(response.status, response.body)

    async def _start(self, conn: asyncpg.Connection, record: Record) -> str | None:
        """Validate and price, then reserve (inside the claim's transaction): returns the
        card's provider token."""
        request, user_id = record.request, record.user_id
        method = await self._payer(conn, user_id, request)
        if request.reservation_id is not None:
            lines, currency = await basket.flash_lines(
                conn, self._admission, self._sales, user_id, request.reservation_id)
        else:
            lines, currency = await basket.cart_lines(conn, self._carts, user_id)

        coupon = None
        subtotal = sum((line.subtotal for line in lines), Decimal(0))
        if request.coupon_code is not None:
            coupon = await Coupons.applicable(conn, request.coupon_code,
                                              user_id=user_id, subtotal=subtotal)
        priced = quote([line.subtotal for line in lines], self._rules,
                       coupon[2] if coupon else None)
        if request.reservation_id is None:
            await basket.take_stock(conn, lines)
        ids = await conn.fetchrow(
            "INSERT INTO payments (checkout_id, order_id, user_id, payment_method_id,"
            " method, amount) VALUES ($1, nextval(pg_get_serial_sequence('orders',"
            " 'order_id')), $2, $3, $4, $5) RETURNING order_id, payment_id",
            record.checkout_id, user_id, request.payment_method_id, method["type"],
            priced.total)
        if coupon is not None:
            await Coupons.redeem(conn, coupon_id=coupon[0], user_id=user_id,
                                 checkout_id=record.checkout_id,
                                 order_id=ids["order_id"], discount=priced.discount)
        plan = Plan(order_id=ids["order_id"], payment_id=ids["payment_id"],
                    method=method["type"], lines=lines, subtotal=priced.subtotal,
                    discount=priced.discount, tax=priced.tax,
                    shipping_fee=priced.shipping_fee, total=priced.total,
                    currency=currency, shipping_address_id=request.shipping_address_id,
                    payment_method_id=request.payment_method_id,
                    coupon_code=coupon[1] if coupon else None,
                    reservation_id=request.reservation_id)
        await self._store.advance(
            conn, record, "reserved", ", order_id = $1, payment_id = $2, plan = $3",
            plan.order_id, plan.payment_id, msgspec.to_builtins(plan))
        record.plan = plan
        return method["provider_token"]

    @staticmethod
    async def _payer(conn: asyncpg.Connection, user_id: int, request: CheckoutRequest
                     ) -> asyncpg.Record:
        """The caller's address and payment method, scoped by owner: another user's is
        indistinguishable from a missing one."""
        row = await conn.fetchrow(
            "SELECT a.address_id, pm.type, pm.provider_token FROM (VALUES (1)) AS one"
            " LEFT JOIN addresses a ON a.address_id = $2 AND a.user_id = $1"
            " LEFT JOIN payment_methods pm ON pm.payment_method_id = $3 AND pm.user_id = $1",
            user_id, request.shipping_address_id, request.payment_method_id)
        if row["address_id"] is None:
            raise NotFound("No such address.")
        if row["type"] is None:
            raise NotFound("No such payment method.")
        return row

    async def _pay(self, record: Record, plan: Plan, token: str | None) -> None:
        """reserved -> ordered: authorize, confirm the hold, write the order."""
        if token is None and plan.method == "card":  # resumed: the token was not kept
            token = await self._pool.fetchval(
                "SELECT provider_token FROM payment_methods WHERE payment_method_id = $1"
                " AND user_id = $2", plan.payment_method_id, record.user_id)
        await self._payments.authorize(self._payment(record, plan), token)
        await self._at("after_authorize", record)
        if plan.reservation_id is not None:
            await self._admission.confirm(plan.reservation_id, user_id=record.user_id,
                                          order_id=plan.order_id)
            await self._at("after_confirm", record)
        if plan.method == "cod":  # nothing to capture: paid on delivery, done now
            async with self._pool.acquire() as conn, conn.transaction():
                record.view = await self._write_order(conn, record, plan)
                await self._complete(conn, record, plan, record.view)
        else:
            async with self._pool.acquire() as conn:  # one statement: atomic on its own
                record.view = await self._write_order(conn, record, plan)
        await self._at("after_order", record)
        if record.step == "done":
            await self._after_success(record, plan)

    async def _settle(self, record: Record, plan: Plan) -> None:
        """ordered -> done: capture, mark paid, notify, store the response."""
        await self._payments.capture(self._payment(record, plan))
        await self._at("after_capture", record)
        # Paid: the units leave the cart now (idempotent), so that the settle statement
        # records the cart as done and no extra write is needed.
        cart_pending = (record.request.kind == "cart"
                        and await self._empty_cart(record.checkout_id, record.user_id, plan))
        await self._at("after_cart", record)
        placed = record.view or await load_view(self._pool, plan.order_id)  # resumed: read it
        at = datetime.now(UTC)
        paid = msgspec.structs.replace(
            placed, status="paid", updated_at=at,
            events=[*placed.events, OrderEventView(status="paid", at=at)],
            payment=msgspec.structs.replace(placed.payment, status="captured"))
        body = encode(paid)
        # One statement, so atomic: the checkout ends (if we still hold it), the order is
        # paid, its tracking event, the payment captured, the notification.
        done, args = self._store.finish_cte(record, status=201, body=body,
                                            cart_pending=cart_pending, first=1)
        notify, notify_args = outbox.enqueue_cte(
            "order.confirmed", order_id=plan.order_id, user_id=record.user_id,
            data={"status": "paid", "total": plan.total, "items": len(plan.lines)}, first=10,
            after="c")
        async with self._pool.acquire() as conn:
            settled = await conn.fetchval(
                f"WITH {done}, {notify},"
                " o AS (UPDATE orders SET status = 'paid', updated_at = $7 WHERE order_id = $8"
                " AND status = 'placed' AND EXISTS (SELECT 1 FROM c) RETURNING order_id),"
                " e AS (INSERT INTO order_events (order_id, status, at)"
                " SELECT order_id, 'paid', $7 FROM o),"
                " p AS (UPDATE payments SET status = 'captured', updated_at = $7"
                " WHERE payment_id = $9 AND EXISTS (SELECT 1 FROM c))"
                " SELECT count(*) FROM c", *args, at, plan.order_id, plan.payment_id,
                *notify_args)
        if not settled:
            raise LeaseLost()
        self._store.finished(record, 201, body)
        metrics.ORDERS.labels("paid").inc()

    async def _write_order(self, conn: asyncpg.Connection, record: Record, plan: Plan
                           ) -> OrderView:
        """Order, items, first tracking event, payment authorized; returns the order as
        written, without reading it back."""
        at = datetime.now(UTC)
        payment_status = "pending" if plan.method == "cod" else "authorized"
        advance, args = self._store.advance_cte(record, "ordered", first=22)
        # One statement: nothing is written unless we still hold the checkout (FROM c).
        written = await conn.fetch(
            f"WITH {advance},"
            " o AS (INSERT INTO orders (order_id, user_id, idempotency_key, status, subtotal,"
            " discount, tax, shipping_fee, total, currency, shipping_address_id,"
            " payment_method_id, coupon_code, reservation_id, created_at, updated_at)"
            " SELECT $1, $2, $3, 'placed', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $21,"
            " $21 FROM c RETURNING order_id),"
            " e AS (INSERT INTO order_events (order_id, status, at)"
            " SELECT order_id, 'placed', $21 FROM o),"
            " p AS (UPDATE payments SET status = $20, updated_at = $21 WHERE payment_id = $19"
            " AND EXISTS (SELECT 1 FROM c))"
            " INSERT INTO order_items (order_id, product_id, sale_id, quantity, unit_price,"
            " subtotal) SELECT (SELECT order_id FROM o), * FROM"
            " unnest($14::bigint[], $15::bigint[], $16::int[], $17::numeric[], $18::numeric[])"
            " WHERE EXISTS (SELECT 1 FROM o) RETURNING order_item_id, product_id",
            plan.order_id, record.user_id, record.request.idempotency_key, plan.subtotal,
            plan.discount, plan.tax, plan.shipping_fee, plan.total, plan.currency,
            plan.shipping_address_id, plan.payment_method_id, plan.coupon_code,
            plan.reservation_id, [line.product_id for line in plan.lines],
            [line.sale_id for line in plan.lines], [line.quantity for line in plan.lines],
            [line.unit_price for line in plan.lines], [line.subtotal for line in plan.lines],
            plan.payment_id, payment_status, at, *args)
        if not written:
            raise LeaseLost()
        record.step = "ordered"
        item_of = {r["product_id"]: r["order_item_id"] for r in written}
        items = sorted((OrderItemView(order_item_id=item_of[ln.product_id],
                                      product_id=ln.product_id, name=ln.name,
                                      quantity=ln.quantity, unit_price=ln.unit_price,
                                      subtotal=ln.subtotal, sale_id=ln.sale_id)
                        for ln in plan.lines), key=lambda item: item.order_item_id)
        return OrderView(
            order_id=plan.order_id, status="placed", subtotal=plan.subtotal,
            discount=plan.discount, tax=plan.tax, shipping_fee=plan.shipping_fee,
            total=plan.total, currency=plan.currency, items=items,
            events=[OrderEventView(status="placed", at=at)],
            payment=PaymentView(method=plan.method, status=payment_status, amount=plan.total,
                                refunded_amount=ZERO),
            shipping_address_id=plan.shipping_address_id,
            payment_method_id=plan.payment_method_id, coupon_code=plan.coupon_code,
            reservation_id=plan.reservation_id, created_at=at, updated_at=at)

    async def _complete(self, conn: asyncpg.Connection, record: Record, plan: Plan,
                        view: OrderView) -> None:
        """Notify and store the response (inside the step's transaction)."""
        await outbox.enqueue(conn, "order.confirmed", order_id=plan.order_id,
                             user_id=record.user_id,
                             data={"status": view.status, "total": plan.total,
                                   "items": len(plan.lines)})
        await self._store.finish(conn, record, status=201, body=encode(view),
                                 cart_pending=record.request.kind == "cart")
        metrics.ORDERS.labels(view.status).inc()

    async def _after_success(self, record: Record, plan: Plan) -> None:
        """Cash on delivery: the ordered units leave the cart after the order is placed."""
        if record.request.kind == "cart" and not await self._empty_cart(
                record.checkout_id, record.user_id, plan):
            await self._pool.execute(
                "UPDATE checkouts SET cart_pending = false WHERE checkout_id = $1",
                record.checkout_id)

    async def _empty_cart(self, checkout_id: int, user_id: int, plan: Plan) -> bool:
        """Take the ordered units out of the cart (at most once per checkout); True when
        Redis could not be reached and recovery must do it later."""
        try:
            await self._carts.remove_ordered(
                user_id, {line.product_id: line.quantity for line in plan.lines},
                checkout_id=checkout_id)
        except Exception as exc:  # the order stands either way
            if not _transient(exc):
                raise
            log.warning("checkout %s: cart not emptied yet: %s", checkout_id, exc)
            return True
        return False

    async def _clear_pending_carts(self, limit: int) -> int:
        rows = await self._pool.fetch(
            "SELECT checkout_id, user_id, plan FROM checkouts WHERE cart_pending"
            " AND finished_at < now() - make_interval(secs => $2) ORDER BY finished_at LIMIT $1",
            limit, self._store.lease_seconds)
        for row in rows:
            plan = msgspec.convert(row["plan"], Plan, strict=False)
            if not await self._empty_cart(row["checkout_id"], row["user_id"], plan):
                await self._pool.execute(
                    "UPDATE checkouts SET cart_pending = false WHERE checkout_id = $1",
                    row["checkout_id"])
        return len(rows)

    # -- compensation --------------------------------------------------------------------
    async def _begin_compensation(self, record: Record, exc: Exception) -> None:
        if isinstance(exc, FlashsaleError):
            error = exc
        elif isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            error = Conflict("The order could not be recorded; the payment was reversed.",
                             details={"reason": "order_write_failed"})
        else:
            log.exception("checkout %s failed at step %s", record.checkout_id, record.step)
            error = Conflict("The checkout could not be completed; the payment was reversed.",
                             details={"reason": "checkout_failed"})
        metrics.ORDERS.labels(error.code).inc()
        async with self._pool.acquire() as conn:
            await self._store.advance(conn, record, "compensating",
                                      ", response_status = $1, response_body = $2",
                                      error.status, error_body(error).decode())

    async def _unwind(self, record: Record, plan: Plan) -> None:
        """compensating -> done: everything the saga did, undone (each part idempotent)."""
        state = await self._pool.fetchrow(
            "SELECT c.response_status, c.response_body, p.status AS payment_status"
            " FROM checkouts c JOIN payments p ON p.payment_id = $2 WHERE c.checkout_id = $1",
            record.checkout_id, plan.payment_id)
        declined = state["payment_status"] == "declined"
        outcome = "declined" if declined else await self._payments.reverse(
            self._payment(record, plan))
        if plan.reservation_id is not None:
            await self._return_hold(record, plan, "payment_failed" if declined else
                                    "checkout_failed")

        async def undo() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                if plan.reservation_id is None:
                    await restock(conn, {ln.product_id: ln.quantity for ln in plan.lines})
                await Coupons.release(conn, checkout_id=record.checkout_id)
                await conn.execute(
                    "WITH o AS (UPDATE orders SET status = 'cancelled', updated_at = now()"
                    " WHERE order_id = $1 AND status IN ('placed', 'paid') RETURNING order_id),"
                    " p AS (UPDATE payments SET status = $3, updated_at = now()"
                    " WHERE payment_id = $2 AND status <> 'declined')"
                    " INSERT INTO order_events (order_id, status, note)"
                    " SELECT order_id, 'cancelled', 'checkout failed' FROM o",
                    plan.order_id, plan.payment_id, outcome)
                await self._store.finish(conn, record, status=state["response_status"],
                                         body=state["response_body"].encode())

        await retrying(undo)

    async def _return_hold(self, record: Record, plan: Plan, reason: str) -> None:
        hold = await self._admission.get(plan.reservation_id)
        if hold is None or hold.user_id != record.user_id:
            return
        if hold.status == "held":
            await self._admission.release(plan.reservation_id, user_id=record.user_id,
                                          reason=reason)
        elif hold.status == "confirmed" and hold.order_id == plan.order_id:
            await self._admission.release(plan.reservation_id, user_id=record.user_id,
                                          include_confirmed=True, reason=reason)

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _payment(record: Record, plan: Plan) -> Payment:
        return Payment(payment_id=plan.payment_id, method=plan.method, amount=plan.total,
                       user_id=record.user_id)

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
