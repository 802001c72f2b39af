"""Pricing rules: subtotal, discount, tax, shipping, total. Pure functions on Decimal.

The rules (README "Pricing"):
- subtotal = the sum of unit price x quantity over the lines;
- discount = percent_off % of the subtotal, rounded half-up to the cent, or amount_off;
  never more than the subtotal;
- tax = tax_rate x (subtotal - discount), rounded half-up to the cent (shipping is not taxed);
- shipping = 0 when (subtotal - discount) is strictly over free_shipping_over, else
  shipping_fee;
- total = subtotal - discount + tax + shipping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from engine.money import cents
from engine.settings import Settings

ZERO = Decimal("0.00")
HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True, kw_only=True)
class PricingRules:
    tax_rate: Decimal
    shipping_fee: Decimal
    free_shipping_over: Decimal

    @classmethod
    def from_settings(cls, settings: Settings) -> PricingRules:
        return cls(tax_rate=settings.tax_rate, shipping_fee=cents(settings.shipping_fee),
                   free_shipping_over=cents(settings.free_shipping_over))


@dataclass(frozen=True, slots=True, kw_only=True)
class Discount:
    """A coupon's reduction: exactly one of ``percent_off`` and ``amount_off``."""
    percent_off: Decimal | None = None
    amount_off: Decimal | None = None

    def on(self, subtotal: Decimal) -> Decimal:
        if self.percent_off is not None:
            off = cents(subtotal * self.percent_off / HUNDRED)
        else:
            off = cents(self.amount_off or ZERO)
        return min(off, subtotal)


@dataclass(frozen=True, slots=True)
class Quote:
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    shipping_fee: Decimal
    total: Decimal


def line_subtotal(unit_price: Decimal, quantity: int) -> Decimal:
    return cents(unit_price * quantity)


def quote(line_subtotals: Iterable[Decimal], rules: PricingRules,
          discount: Discount | None = None) -> Quote:
    subtotal = cents(sum(line_subtotals, ZERO))
    off = discount.on(subtotal) if discount is not None else ZERO
    goods = subtotal - off
    tax = cents(goods * rules.tax_rate)
    shipping = ZERO if goods > rules.free_shipping_over else rules.shipping_fee
    return Quote(subtotal=subtotal, discount=off, tax=tax, shipping_fee=shipping,
                 total=goods + tax + shipping)


def refund_share(*, total: Decimal, shipping_fee: Decimal, subtotal: Decimal,
                 returned_subtotal: Decimal, already_refunded: Decimal,
                 everything_returned: bool) -> Decimal:
    """What returning goods worth ``returned_subtotal`` (at their list price) gives back:
    their share of what was paid for goods (total minus shipping, so discount and tax are
    shared pro rata). The last return gives back exactly the rest, so shares rounded to
    the cent never add up to more or less than was paid."""
    paid_for_goods = total - shipping_fee
    if everything_returned:
        return max(paid_for_goods - already_refunded, ZERO)
    if subtotal <= 0:
        return ZERO
    share = cents(paid_for_goods * returned_subtotal / subtotal)
    return min(share, max(paid_for_goods - already_refunded, ZERO))
