"""The pricing rules, exactly: Decimal throughout, half-up to the cent, tax on the
discounted goods, free shipping strictly over the threshold."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.settings import Settings
from orders.pricing import Discount, PricingRules, quote, refund_share

D = Decimal
RULES = PricingRules.from_settings(Settings())  # 8% tax, 5.00 shipping, free over 50.00


def test_the_defaults_are_the_documented_rules() -> None:
    assert (RULES.tax_rate, RULES.shipping_fee, RULES.free_shipping_over) == (
        D("0.08"), D("5.00"), D("50.00"))


@pytest.mark.parametrize(("lines", "discount", "expected"), [
    # subtotal, discount, tax, shipping, total
    ([D("12.34")], None, ("12.34", "0.00", "0.99", "5.00", "18.33")),
    ([D("50.00")], None, ("50.00", "0.00", "4.00", "5.00", "59.00")),  # not over 50.00
    ([D("50.01")], None, ("50.01", "0.00", "4.00", "0.00", "54.01")),
    ([D("59.97"), D("10.48")], Discount(percent_off=D("10")),  # 7.045 -> 7.05 (half up)
     ("70.45", "7.05", "5.07", "0.00", "68.47")),
    ([D("60.00")], Discount(amount_off=D("10.00")),  # discounted goods 50.00: pays shipping
     ("60.00", "10.00", "4.00", "5.00", "59.00")),
    ([D("9.99")], Discount(amount_off=D("20.00")), ("9.99", "9.99", "0.00", "5.00", "5.00")),
    ([D("0.05")], Discount(percent_off=D("50")), ("0.05", "0.03", "0.00", "5.00", "5.02")),
])
def test_quotes(lines, discount, expected) -> None:
    q = quote(lines, RULES, discount)
    assert (q.subtotal, q.discount, q.tax, q.shipping_fee, q.total) == tuple(map(D, expected))


cents = st.integers(min_value=0, max_value=10_000_000).map(lambda c: D(c) / 100)


@given(st.lists(cents, min_size=1, max_size=8),
       st.one_of(st.none(), st.integers(1, 100).map(lambda p: Discount(percent_off=D(p))),
                 cents.map(lambda a: Discount(amount_off=a))))
def test_quote_invariants(lines, discount) -> None:
    q = quote(lines, RULES, discount)
    for amount in (q.subtotal, q.discount, q.tax, q.shipping_fee, q.total):
        assert amount >= 0 and amount.as_tuple().exponent == -2
    assert q.discount <= q.subtotal
    assert q.total == q.subtotal - q.discount + q.tax + q.shipping_fee
    assert q.shipping_fee == (0 if q.subtotal - q.discount > D("50.00") else D("5.00"))


@given(st.lists(st.integers(1, 50_000), min_size=1, max_size=6), st.integers(0, 100))
def test_refund_shares_add_up_to_what_was_paid_for_goods(line_cents, percent) -> None:
    """Returning the lines one by one refunds exactly total - shipping, never more."""
    lines = [D(c) / 100 for c in line_cents]
    discount = Discount(percent_off=D(percent)) if percent else None
    q = quote(lines, RULES, discount)
    refunded = D("0.00")
    for n, line in enumerate(lines):
        share = refund_share(total=q.total, shipping_fee=q.shipping_fee, subtotal=q.subtotal,
                             returned_subtotal=line, already_refunded=refunded,
                             everything_returned=n == len(lines) - 1)
        assert share >= 0
        refunded += share
        assert refunded <= q.total - q.shipping_fee
    assert refunded == q.total - q.shipping_fee
