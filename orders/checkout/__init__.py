"""The checkout saga, one module per phase: ``plan`` (validate, price, reserve), ``pay``
(authorize, confirm, write the order, capture), ``cart_cleanup``, ``compensate``; the
driver in ``saga`` reads as the step table. Typed state in ``state``."""

from orders.checkout.saga import Checkout, CheckoutResult, RecoveryReport
from orders.checkout.state import Plan, PlanLine

__all__ = ["Checkout", "CheckoutResult", "Plan", "PlanLine", "RecoveryReport"]
