"""Payment providers against real Postgres: each operation keyed by its reference, so a
repeat (a retry, a resumed saga) never charges or refunds twice; test cards; injected
faults."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from accounts.cards import simulated_outcome
from engine.errors import PaymentDeclined
from orders.payments import Payment, Payments
from orders.providers import (
    CaptureFailed,
    CashOnDelivery,
    Charge,
    Faults,
    ProviderUnavailable,
    SimulatedCardProvider,
    WalletProvider,
)

D = Decimal


@pytest.fixture
async def user(pool) -> int:
    return await pool.fetchval(
        "INSERT INTO users (email, name, password_hash, wallet_balance)"
        " VALUES ('w@example.com', 'W', 'x', 100.00) RETURNING user_id")


async def balance(pool, user: int) -> Decimal:
    return await pool.fetchval("SELECT wallet_balance FROM users WHERE user_id = $1", user)


async def test_simulated_card_honours_the_test_cards_and_repeats_safely(pool) -> None:
    card = SimulatedCardProvider(pool=pool, outcome_of=simulated_outcome)
    ok = Charge(reference="pay_1", amount=D("12.50"), user_id=1,
                provider_token="tok_sim_approved_abc")
    await card.authorize(ok)
    await card.authorize(ok)  # repeat: the same authorization
    assert await pool.fetchval("SELECT count(*) FROM sim_card_charges") == 1
    for token, reason in (("tok_sim_declined_x", "card_declined"),
                          ("tok_sim_insufficient_funds_x", "insufficient_funds"),
                          ("forged", "card_declined")):
        with pytest.raises(PaymentDeclined) as caught:
            await card.authorize(Charge(reference="pay_2", amount=D("1.00"), user_id=1,
                                        provider_token=token))
        assert caught.value.details == {"reason": reason}
    await card.capture("pay_1")
    await card.capture("pay_1")
    assert await card.void("pay_1") == "captured"  # too late to void: refund instead
    await card.refund("pay_1", refund_reference="r1", amount=D("2.50"))
    await card.refund("pay_1", refund_reference="r1", amount=D("2.50"))  # once
    assert await pool.fetchval("SELECT refunded_amount FROM sim_card_charges") == D("2.50")
    with pytest.raises(CaptureFailed):
        await card.refund("pay_1", refund_reference="r2", amount=D("10.01"))
    assert await card.void("pay_404") == "absent"
    with pytest.raises(CaptureFailed):
        await card.capture("pay_404")


async def test_a_voided_authorization_stays_voided(pool) -> None:
    card = SimulatedCardProvider(pool=pool, outcome_of=simulated_outcome)
    charge = Charge(reference="pay_9", amount=D("5.00"), user_id=1,
                    provider_token="tok_sim_approved_abc")
    await card.authorize(charge)
    assert await card.void("pay_9") == "voided"
    assert await card.void("pay_9") == "voided"
    with pytest.raises(PaymentDeclined):  # a late retry cannot revive it
        await card.authorize(charge)
    with pytest.raises(CaptureFailed):
        await card.capture("pay_9")


async def test_wallet_authorize_void_refund_are_each_once(pool, user) -> None:
    wallet = WalletProvider(pool=pool)
    charge = Charge(reference="pay_1", amount=D("30.00"), user_id=user)
    await asyncio.gather(*(wallet.authorize(charge) for _ in range(5)))
    assert await balance(pool, user) == D("70.00")
    assert await wallet.void("pay_1") == "voided"
    assert await wallet.void("pay_1") == "voided"
    assert await balance(pool, user) == D("100.00")
    assert await wallet.void("pay_unknown") == "absent"
    charge2 = Charge(reference="pay_2", amount=D("40.00"), user_id=user)
    await wallet.authorize(charge2)
    await wallet.capture("pay_2")
    await wallet.capture("pay_2")
    assert await wallet.void("pay_2") == "captured"
    await wallet.refund("pay_2", refund_reference="cancel:1", amount=D("40.00"))
    await wallet.refund("pay_2", refund_reference="cancel:1", amount=D("40.00"))
    assert await balance(pool, user) == D("100.00")
    entries = await pool.fetch("SELECT reference, amount, balance_after FROM wallet_ledger"
                               " ORDER BY entry_id")
    assert [(e["reference"], e["amount"], e["balance_after"]) for e in entries] == [
        ("auth:pay_1", D("-30.00"), D("70.00")), ("void:pay_1", D("30.00"), D("100.00")),
        ("auth:pay_2", D("-40.00"), D("60.00")), ("capture:pay_2", D("0.00"), D("60.00")),
        ("refund:cancel:1", D("40.00"), D("100.00"))]


async def test_wallet_never_overspends_under_concurrency(pool, user) -> None:
    wallet = WalletProvider(pool=pool)
    results = await asyncio.gather(
        *(wallet.authorize(Charge(reference=f"pay_{n}", amount=D("15.00"), user_id=user))
          for n in range(10)), return_exceptions=True)
    paid = [r for r in results if r is None]
    declined = [r for r in results if isinstance(r, PaymentDeclined)]
    assert (len(paid), len(declined)) == (6, 4)
    assert await balance(pool, user) == D("10.00")
    assert all(e.details == {"reason": "insufficient_funds"} for e in declined)


async def test_injected_latency_and_failures(pool) -> None:
    faults = Faults(latency={"authorize": 0.3}, failures={"capture": 2})
    card = SimulatedCardProvider(pool=pool, outcome_of=simulated_outcome, faults=faults)
    payments = Payments(pool=pool, card=card, wallet=WalletProvider(pool=pool),
                        cod=CashOnDelivery(), timeout=0.1)
    payment = Payment(payment_id=7, method="card", amount=D("3.00"), user_id=1)
    with pytest.raises(ProviderUnavailable):  # slower than the timeout
        await payments.authorize(payment, "tok_sim_approved_abc")
    payments.timeout = 2.0
    await payments.authorize(payment, "tok_sim_approved_abc")
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await payments.capture(payment)
    await payments.capture(payment)
    assert await pool.fetchval("SELECT status FROM sim_card_charges") == "captured"
    assert await payments.reverse(payment) == "refunded"
    assert await payments.reverse(payment) == "refunded"  # once: keyed by the payment
    assert await pool.fetchval("SELECT refunded_amount FROM sim_card_charges") == D("3.00")


async def test_card_numbers_are_never_stored(api, pool) -> None:
    from tests.orders_support import CARD_OK, add_to_cart, place, product, shopper

    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="5.00"))
    await place(api, buyer)
    for table, column in (("payment_methods", "provider_token"), ("checkouts", "request::text"),
                          ("checkouts", "response_body"), ("outbox", "payload::text"),
                          ("sim_card_charges", "reference")):
        values = [r[0] for r in await pool.fetch(f"SELECT {column} FROM {table}")]
        assert values and not any(CARD_OK in (v or "") or CARD_OK[-8:] in (v or "")
                                  for v in values), table
