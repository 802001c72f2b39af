"""Payment providers: the interface (authorize, capture, void, refund) and three providers.

Every provider call is keyed by our reference (``pay_<payment_id>``, or a refund
reference), so repeating a call after a crash or a timeout never charges or refunds twice:
that is what lets the checkout saga resume from its last recorded step.

- ``SimulatedCardProvider``: honours the API.md test cards through the vault's outcome of
  the provider token, keeps its own books (``sim_card_*`` tables, as a real provider keeps
  them on its side), and takes injected latency or failures for tests.
- ``WalletProvider``: the user's balance in Postgres, debited with a conditional update so
  concurrent orders can never overspend it; every movement is a ``wallet_ledger`` entry.
- ``CashOnDelivery``: nothing to authorize; the order is ``placed`` and paid on delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

import asyncpg

from engine.errors import PaymentDeclined, Unavailable

VoidResult = Literal["voided", "captured", "absent"]


class ProviderUnavailable(Unavailable):
    """The provider did not answer in time: the outcome is unknown, the call may be
    repeated with the same reference."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "The payment provider is unavailable; retry shortly.",
                         dependency="payments")


class CaptureFailed(PaymentDeclined):
    message = "The payment could not be captured."


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    reference: str
    amount: Decimal
    user_id: int
    provider_token: str | None = None


class PaymentProvider(Protocol):
    async def authorize(self, charge: Charge) -> None:
        """Reserve the amount; raise PaymentDeclined or ProviderUnavailable."""

    async def capture(self, reference: str) -> None:
        """Take the authorized amount (idempotent)."""

    async def void(self, reference: str) -> VoidResult:
        """Drop an authorization (idempotent). ``captured``: too late, refund instead;
        ``absent``: nothing was authorized under this reference."""

    async def refund(self, reference: str, *, refund_reference: str, amount: Decimal) -> None:
        """Give back part or all of a captured amount, once per ``refund_reference``."""


def declined(reason: str) -> PaymentDeclined:
    text = {"insufficient_funds": "The payment was declined: insufficient funds.",
            "card_declined": "The card was declined."}.get(reason, "The payment was declined.")
    return PaymentDeclined(text, details={"reason": reason})


@dataclass(slots=True)
class Faults:
    """Injected behaviour of the simulated provider: seconds of latency per operation, and
    a number of ProviderUnavailable failures per operation (consumed one per call)."""
    latency: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    async def before(self, operation: str) -> None:
        delay = self.latency.get(operation, 0.0)
        if delay:
            await asyncio.sleep(delay)
        if self.failures.get(operation, 0) > 0:
            self.failures[operation] -= 1
            raise ProviderUnavailable(f"Injected {operation} failure.")


class SimulatedCardProvider:
    def __init__(self, *, pool: asyncpg.Pool, outcome_of: Callable[[str], str],
                 faults: Faults | None = None) -> None:
        self._pool = pool
        self._outcome_of = outcome_of  # the vault: provider token -> approved | declined | ...
        self.faults = faults or Faults()

    async def authorize(self, charge: Charge) -> None:
        await self.faults.before("authorize")
        outcome = self._outcome_of(charge.provider_token or "")
        if outcome != "approved":
            raise declined("card_declined" if outcome == "declined" else outcome)
        status = await self._pool.fetchval(
            "WITH new AS (INSERT INTO sim_card_charges (reference, amount, status)"
            " VALUES ($1, $2, 'authorized') ON CONFLICT (reference) DO NOTHING RETURNING status)"
            " SELECT status FROM new UNION ALL"
            " SELECT status FROM sim_card_charges WHERE reference = $1 LIMIT 1",
            charge.reference, charge.amount)
        if status == "voided":
            raise declined("authorization_voided")

    async def capture(self, reference: str) -> None:
        await self.faults.before("capture")
        done = await self._pool.fetchval(
            "UPDATE sim_card_charges SET status = 'captured', updated_at = now()"
            " WHERE reference = $1 AND status IN ('authorized', 'captured') RETURNING 1",
            reference)
        if done is None:
            raise CaptureFailed(details={"reason": "no_authorization"})

    async def void(self, reference: str) -> VoidResult:
        await self.faults.before("void")
        status = await self._pool.fetchval(
            "WITH v AS (UPDATE sim_card_charges SET status = 'voided', updated_at = now()"
            " WHERE reference = $1 AND status = 'authorized' RETURNING status)"
            " SELECT status FROM v UNION ALL"
            " SELECT status FROM sim_card_charges WHERE reference = $1 LIMIT 1", reference)
        if status is None:
            return "absent"
        return "captured" if status == "captured" else "voided"

    async def refund(self, reference: str, *, refund_reference: str, amount: Decimal) -> None:
        await self.faults.before("refund")
        async with self._pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval(
                "INSERT INTO sim_card_refunds (refund_reference, reference, amount)"
                " VALUES ($1, $2, $3) ON CONFLICT (refund_reference) DO NOTHING RETURNING 1",
                refund_reference, reference, amount)
            if new and await conn.fetchval(
                    "UPDATE sim_card_charges SET refunded_amount = refunded_amount + $2,"
                    " updated_at = now() WHERE reference = $1 AND status = 'captured'"
                    " AND refunded_amount + $2 <= amount RETURNING 1",
                    reference, amount) is None:
                raise CaptureFailed("The refund exceeds what was captured.",
                                    details={"reason": "refund_exceeds_capture"})


class WalletProvider:
    """Ledger references: ``auth:<ref>`` (debit), ``capture:<ref>`` (marker),
    ``void:<ref>`` and ``refund:<refund ref>`` (credits)."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def authorize(self, charge: Charge) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # A second authorize of the same reference waits on the unique index for the
            # first one's outcome and then does nothing.
            entry = await conn.fetchval(
                "INSERT INTO wallet_ledger (user_id, reference, amount, balance_after)"
                " VALUES ($1, $2, $3, 0) ON CONFLICT (reference) DO NOTHING RETURNING entry_id",
                charge.user_id, f"auth:{charge.reference}", -charge.amount)
            if entry is None:
                return
            balance = await conn.fetchval(
                "UPDATE users SET wallet_balance = wallet_balance - $2"
                " WHERE user_id = $1 AND wallet_balance >= $2 RETURNING wallet_balance",
                charge.user_id, charge.amount)
            if balance is None:
                raise declined("insufficient_funds")  # rolls the ledger entry back too
            await conn.execute("UPDATE wallet_ledger SET balance_after = $2 WHERE entry_id = $1",
                               entry, balance)

    async def capture(self, reference: str) -> None:
        done = await self._pool.fetchval(
            "INSERT INTO wallet_ledger (user_id, reference, amount, balance_after)"
            " SELECT l.user_id, $2, 0, u.wallet_balance FROM wallet_ledger l"
            " JOIN users u USING (user_id) WHERE l.reference = $1"
            " ON CONFLICT (reference) DO UPDATE SET amount = 0 RETURNING 1",
            f"auth:{reference}", f"capture:{reference}")
        if done is None:
            raise CaptureFailed(details={"reason": "no_authorization"})

    async def void(self, reference: str) -> VoidResult:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT reference, user_id, amount FROM wallet_ledger WHERE reference = ANY($1)",
                [f"auth:{reference}", f"capture:{reference}", f"void:{reference}"])
            found = {r["reference"].split(":", 1)[0]: r for r in rows}
            if "capture" in found:
                return "captured"
            if "auth" not in found:
                return "absent"
            if "void" not in found:
                auth = found["auth"]
                await self._credit(conn, auth["user_id"], f"void:{reference}", -auth["amount"])
            return "voided"

    async def refund(self, reference: str, *, refund_reference: str, amount: Decimal) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval(
                "SELECT user_id FROM wallet_ledger WHERE reference = $1", f"capture:{reference}")
            if user_id is None:
                raise CaptureFailed("Nothing was captured to refund.",
                                    details={"reason": "not_captured"})
            await self._credit(conn, user_id, f"refund:{refund_reference}", amount)

    @staticmethod
    async def _credit(conn: asyncpg.Connection, user_id: int, reference: str,
                      amount: Decimal) -> None:
        entry = await conn.fetchval(
            "INSERT INTO wallet_ledger (user_id, reference, amount, balance_after)"
            " VALUES ($1, $2, $3, 0) ON CONFLICT (reference) DO NOTHING RETURNING entry_id",
            user_id, reference, amount)
        if entry is not None:
            await conn.execute(
                "WITH u AS (UPDATE users SET wallet_balance = wallet_balance + $3"
                " WHERE user_id = $2 RETURNING wallet_balance)"
                " UPDATE wallet_ledger SET balance_after = (SELECT wallet_balance FROM u)"
                " WHERE entry_id = $1", entry, user_id, amount)


class CashOnDelivery:
    """Nothing moves until delivery; a refund of cash is handed back by the courier."""

    async def authorize(self, charge: Charge) -> None:
        return None

    async def capture(self, reference: str) -> None:
        return None

    async def void(self, reference: str) -> VoidResult:
        return "voided"

    async def refund(self, reference: str, *, refund_reference: str, amount: Decimal) -> None:
        return None
