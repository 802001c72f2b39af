"""Payments: the ``payments`` rows of orders and the calls to their provider.

``Payments`` is the one writer of ``payments``: it opens the row at the checkout's
reserve step, moves its status (in the statement of the saga step that moves it, through
the ``*_cte`` fragments, or on its own), records refunds, and routes each provider call
to the method's provider with a timeout. Providers live in ``orders/providers.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

import asyncpg

from engine.errors import PaymentDeclined
from engine.sql import Params
from orders.providers import Charge, PaymentProvider, ProviderUnavailable

PaymentMethod = Literal["card", "wallet", "cod"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """A row of ``payments`` as the saga and the order tasks see it."""
    payment_id: int
    method: PaymentMethod
    amount: Decimal
    user_id: int

    @property
    def reference(self) -> str:
        return f"pay_{self.payment_id}"


_OPEN = ("INSERT INTO payments (checkout_id, order_id, user_id, payment_method_id, method,"
         " amount) VALUES ($1, nextval(pg_get_serial_sequence('orders', 'order_id')), $2, $3,"
         " $4, $5) RETURNING order_id, payment_id")


class Payments:
    """Routes each operation to the method's provider, with a timeout: a provider that does
    not answer in ``timeout`` seconds is ProviderUnavailable (the saga stays resumable)."""

    def __init__(self, *, pool: asyncpg.Pool, card: PaymentProvider, wallet: PaymentProvider,
                 cod: PaymentProvider, timeout: float = 5.0) -> None:
        self._pool = pool
        self._providers: dict[PaymentMethod, PaymentProvider] = {"card": card, "wallet": wallet,
                                                       "cod": cod}
        self.timeout = timeout

    @staticmethod
    async def open(conn: asyncpg.Connection, *, checkout_id: int, user_id: int,
                   payment_method_id: int, method: PaymentMethod, amount: Decimal
                   ) -> tuple[int, int]:
        """The checkout's payment row (``pending``), with the order id allocated beside it
        (inside the reserve step's transaction): (order_id, payment_id)."""
        row = await conn.fetchrow(_OPEN, checkout_id, user_id, payment_method_id, method,
                                  amount)
        return row["order_id"], row["payment_id"]

    @staticmethod
    def status_cte(arg: Params, *, payment_id: int, status: str, at: datetime, after: str
                   ) -> str:
        """A CTE ``p`` that moves the payment to ``status`` (authorized, pending,
        captured) only if the CTE ``after`` returned a row: one statement with the step
        that did it."""
        return (f"p AS (UPDATE payments SET status = {arg(status)}, updated_at = {arg(at)}"
                f" WHERE payment_id = {arg(payment_id)} AND EXISTS (SELECT 1 FROM {after}))")

    @staticmethod
    def reversed_cte(arg: Params, *, payment_id: int, status: str) -> str:
        """A CTE ``p`` recording the checkout's payment as reversed (``reverse``'s answer:
        voided or refunded); a declined payment stays declined."""
        return (f"p AS (UPDATE payments SET status = {arg(status)}, updated_at = now()"
                f" WHERE payment_id = {arg(payment_id)} AND status <> 'declined')")

    @staticmethod
    async def collected(conn: asyncpg.Connection, *, order_id: int) -> None:
        """Cash on delivery: the courier collected it (the order was delivered)."""
        await conn.execute("UPDATE payments SET status = 'captured', updated_at = now()"
                           " WHERE order_id = $1 AND status = 'pending'", order_id)

    @staticmethod
    async def voided(conn: asyncpg.Connection, *, payment_id: int) -> None:
        """An order cancelled before its payment was captured: nothing is owed."""
        await conn.execute("UPDATE payments SET status = 'voided', updated_at = now()"
                           " WHERE payment_id = $1 AND status IN ('pending', 'authorized')",
                           payment_id)

    @staticmethod
    async def record_refund(conn: asyncpg.Connection, *, payment_id: int, reference: str,
                            amount: Decimal, reason: str) -> bool:
        """Record a refund made at the provider (inside the caller's transaction), once
        per reference: True when this call recorded it. The payment is ``refunded`` once
        all of it is."""
        new = await conn.fetchval(
            "INSERT INTO payment_refunds (payment_id, reference, amount, reason)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (reference) DO NOTHING RETURNING 1",
            payment_id, reference, amount, reason)
        if new:
            await conn.execute(
                "UPDATE payments SET refunded_amount = refunded_amount + $2,"
                " status = CASE WHEN refunded_amount + $2 = amount THEN 'refunded'"
                " ELSE status END, updated_at = now() WHERE payment_id = $1",
                payment_id, amount)
        return bool(new)

    def provider(self, method: PaymentMethod) -> PaymentProvider:
        return self._providers[method]

    async def _call(self, operation: Awaitable):
        try:
            async with asyncio.timeout(self.timeout):
                return await operation
        except TimeoutError as exc:
            raise ProviderUnavailable() from exc

    async def authorize(self, payment: Payment, provider_token: str | None) -> None:
        if payment.amount == 0:
            return
        charge = Charge(reference=payment.reference, amount=payment.amount,
                        user_id=payment.user_id, provider_token=provider_token)
        try:
            await self._call(self._providers[payment.method].authorize(charge))
        except PaymentDeclined as exc:
            reason = (exc.details or {}).get("reason", "declined")
            await self._pool.execute(
                "UPDATE payments SET status = 'declined', decline_reason = $2, updated_at = now()"
                " WHERE payment_id = $1", payment.payment_id, reason)
            raise

    async def capture(self, payment: Payment) -> None:
        if payment.amount:
            await self._call(self._providers[payment.method].capture(payment.reference))

    async def reverse(self, payment: Payment) -> str:
        """Undo a payment whatever its state: void an authorization, refund a capture.
        Returns the payment status to record: voided or refunded."""
        if payment.amount == 0:
            return "voided"
        provider = self._providers[payment.method]
        if await self._call(provider.void(payment.reference)) != "captured":
            return "voided"
        await self._call(provider.refund(payment.reference,
                                         refund_reference=f"reversal:{payment.payment_id}",
                                         amount=payment.amount))
        return "refunded"

    async def refund(self, payment: Payment, *, reference: str, amount: Decimal) -> None:
        """Refund ``amount`` of a captured payment at the provider (idempotent by
        ``reference``); the caller records it in ``payment_refunds``."""
        if amount > 0:
            await self._call(self._providers[payment.method].refund(
                payment.reference, refund_reference=reference, amount=amount))

    async def get(self, conn: asyncpg.Connection | asyncpg.Pool, payment_id: int) -> Payment:
        row = await conn.fetchrow(
            "SELECT payment_id, method, amount, user_id FROM payments WHERE payment_id = $1",
            payment_id)
        return Payment(**dict(row))
