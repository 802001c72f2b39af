"""Money: Decimal with two places, never float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999.99")  # NUMERIC(12,2)


def check_amount(value: Decimal) -> Decimal:
    """Raise ValueError unless ``value`` is a finite, non-negative amount with at most two
    decimal places that fits NUMERIC(12,2)."""
    if not value.is_finite():
        raise ValueError("must be a finite amount")
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_AMOUNT:
        raise ValueError(f"must be at most {MAX_AMOUNT}")
    if value.as_tuple().exponent < -2:
        raise ValueError("must have at most two decimal places")
    return value


def cents(value: Decimal) -> Decimal:
    """Round to the cent, half up (the usual rule for tax and discounts)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)
