"""The checkout's typed state: the priced plan fixed at the reserve step, what the saga
carries between its steps, and the services the steps use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import msgspec

from engine.admission import Admission
from engine.errors import Unavailable, as_unavailable
from engine.sales import Sales
from orders.cart import Carts
from orders.idempotency import IdempotencyStore, Record
from orders.payments import Payment, PaymentMethod, Payments
from orders.pricing import PricingRules
from orders.views import OrderView

FaultHook = Callable[[str, Record], Awaitable[None]]


def transient(exc: BaseException) -> bool:
    """An outage (Redis, Postgres, the provider): the step is retried, not compensated."""
    return isinstance(exc, Unavailable) or as_unavailable(exc) is not None


class PlanLine(msgspec.Struct, frozen=True):
    product_id: int
    name: str
    quantity: int
    unit_price: Decimal
    subtotal: Decimal
    sale_id: int | None = None


class Plan(msgspec.Struct, frozen=True):
    """Everything priced and allocated at the reserve step; later steps only execute it.
    Stored as ``checkouts.plan`` (JSON) in the reserve step's transaction."""
    order_id: int
    payment_id: int
    method: PaymentMethod
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

    @classmethod
    def stored(cls, plan: object) -> Plan:
        """The plan as read back from ``checkouts.plan``."""
        return msgspec.convert(plan, cls, strict=False)

    def units(self) -> dict[int, int]:
        """Product id -> quantity ordered."""
        return {line.product_id: line.quantity for line in self.lines}


@dataclass(slots=True)
class Saga:
    """A reserved checkout in this process's hands: its record (the lease), its plan,
    and what only the executor that did a step knows."""
    record: Record
    plan: Plan
    token: str | None = None  # the card's provider token, kept only by the pricing process
    view: OrderView | None = None  # the order as this executor wrote it

    @classmethod
    def resume(cls, record: Record) -> Saga:
        return cls(record, Plan.stored(record.plan))

    @property
    def payment(self) -> Payment:
        return Payment(payment_id=self.plan.payment_id, method=self.plan.method,
                       amount=self.plan.total, user_id=self.record.user_id)

    @property
    def from_cart(self) -> bool:
        return self.record.request.kind == "cart"


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """What the steps use, built once by ``Checkout``; ``at`` awaits the fault hook
    (tests) at each step boundary."""
    pool: asyncpg.Pool
    rules: PricingRules
    admission: Admission
    sales: Sales
    carts: Carts
    payments: Payments
    store: IdempotencyStore
    at: Callable[[str, Record], Awaitable[None]]
