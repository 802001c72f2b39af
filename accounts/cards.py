"""Card checks and the simulated card vault.

A real provider keeps the card in its vault and gives us an opaque token; the simulated
provider does the same: the token carries only the behaviour of the API.md test cards
(approved, declined, insufficient funds), never the number or the CVC.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from engine.errors import ValidationFailed

TEST_CARD_OUTCOMES = {
    "4000000000000002": "declined",
    "4000000000009995": "insufficient_funds",
}


@dataclass(frozen=True, slots=True)
class TokenizedCard:
    brand: str
    last4: str
    provider_token: str


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith("6011") or number.startswith("65"):
        return "discover"
    return "unknown"


def tokenize_card(number: str, exp_month: int, exp_year: int, cvc: str, *,
                  today: tuple[int, int]) -> TokenizedCard:
    """Validate a card and return what may be stored. Error messages never echo the
    number or the CVC."""
    digits = number.replace(" ", "").replace("-", "")
    # ASCII digits only: fullwidth ones pass isdigit() and Luhn, then fail further on.
    if (not (digits.isascii() and digits.isdigit()) or not 12 <= len(digits) <= 19
            or not luhn_ok(digits)):
        raise ValidationFailed.at("$.card_number", "not a valid card number")
    if not (cvc.isascii() and cvc.isdigit() and len(cvc) in (3, 4)):
        raise ValidationFailed.at("$.cvc", "must be 3 or 4 digits")
    year, month = today
    if (exp_year, exp_month) < (year, month):
        raise ValidationFailed.at("$.exp_year", "the card has expired")
    outcome = TEST_CARD_OUTCOMES.get(digits, "approved")
    token = f"tok_sim_{outcome}_{secrets.token_hex(12)}"
    return TokenizedCard(brand=brand_of(digits), last4=digits[-4:], provider_token=token)


def simulated_outcome(provider_token: str) -> str:
    """approved | declined | insufficient_funds, as the simulated provider decides."""
    for outcome in ("insufficient_funds", "declined", "approved"):
        if provider_token.startswith(f"tok_sim_{outcome}_"):
            return outcome
    return "declined"
