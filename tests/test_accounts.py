"""Signup, login, tokens, addresses and payment methods over HTTP."""

from __future__ import annotations

import logging
import time

import jwt

from tests.conftest import SECRET, assert_error

CARD = "4242424242424242"
CVC = "987"


async def test_signup_login_me(api) -> None:
    user = await api.signup(email="Ada@Example.com", name="Ada")
    status, me = await api.call("GET", "/api/v1/me", headers=user["headers"])
    assert status == 200
    assert me == {"user_id": user["user_id"], "email": "Ada@Example.com", "name": "Ada",
                  "role": "customer", "wallet_balance": "0.00"}
    status, body = await api.call("POST", "/api/v1/auth/login",
                                  json={"email": "ada@example.com", "password": "correct-horse-1"})
    assert status == 200 and body["user_id"] == user["user_id"]
    status, again = await api.call("GET", "/api/v1/me",
                                   headers={"Authorization": f"Bearer {body['token']}"})
    assert again == me


async def test_bad_password_and_unknown_email_are_401(api) -> None:
    user = await api.signup()
    for email, password in ((user["email"], "wrong-password"), ("nobody@example.com", "x" * 9)):
        status, body = await api.call("POST", "/api/v1/auth/login",
                                      json={"email": email, "password": password})
        assert status == 401
        assert_error(body, "unauthorized")


async def test_forged_expired_and_tampered_tokens_are_401(api) -> None:
    user = await api.signup()
    now = int(time.time())
    forged = jwt.encode({"sub": str(user["user_id"]), "role": "admin", "exp": now + 600},
                        "not-the-secret-but-long-enough-0123456789", algorithm="HS256")
    expired = jwt.encode({"sub": str(user["user_id"]), "role": "customer", "exp": now - 5},
                         SECRET, algorithm="HS256")
    header, payload, signature = user["token"].split(".")
    admin_claims = jwt.utils.base64url_encode(
        f'{{"sub":"{user["user_id"]}","role":"admin","exp":{now + 600}}}'.encode()).decode()
    tampered = ".".join([header, admin_claims, signature])
    unsigned = jwt.encode({"sub": "1", "role": "admin", "exp": now + 600}, None,
                          algorithm="none")
    for token in (forged, expired, tampered, unsigned, "garbage", ""):
        status, body = await api.call("GET", "/api/v1/me",
                                      headers={"Authorization": f"Bearer {token}"})
        assert status == 401, token
        assert_error(body, "unauthorized")
    status, body = await api.call("GET", "/api/v1/me", headers={"Authorization": user["token"]})
    assert status == 401


async def test_addresses_are_private(api) -> None:
    alice, bob = await api.signup(), await api.signup()
    status, addr = await api.call("POST", "/api/v1/me/addresses", headers=alice["headers"], json={
        "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"})
    assert status == 201 and addr["line2"] is None and addr["city"] == "Springfield"
    path = f"/api/v1/me/addresses/{addr['address_id']}"
    assert (await api.call("GET", path, headers=alice["headers"]))[0] == 200
    status, body = await api.call("GET", path, headers=bob["headers"])
    assert status == 404
    assert_error(body, "not_found")
    assert (await api.call("GET", "/api/v1/me/addresses", headers=bob["headers"]))[1] == []


async def test_payment_methods_store_no_card_number(api, pool, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    alice, bob = await api.signup(), await api.signup()
    status, card = await api.call("POST", "/api/v1/me/payment-methods", headers=alice["headers"],
                                  json={"type": "card", "card_number": CARD, "exp_month": 12,
                                        "exp_year": 2031, "cvc": CVC})
    assert status == 201
    assert card["type"] == "card" and card["last4"] == "4242" and card["brand"] == "visa"
    assert "card_number" not in card and "cvc" not in card
    status, wallet = await api.call("POST", "/api/v1/me/payment-methods",
                                    headers=alice["headers"], json={"type": "wallet"})
    assert status == 201 and wallet["type"] == "wallet" and "last4" not in wallet
    status, cod = await api.call("POST", "/api/v1/me/payment-methods",
                                 headers=alice["headers"], json={"type": "cod"})
    assert status == 201
    # A bad card (Luhn) and a card with an old expiry are refused without echoing the number.
    for bad in ({"card_number": "4242424242424241", "exp_month": 1, "exp_year": 2031},
                {"card_number": CARD, "exp_month": 1, "exp_year": 2001}):
        status, body = await api.call("POST", "/api/v1/me/payment-methods",
                                      headers=alice["headers"],
                                      json={"type": "card", "cvc": CVC, **bad})
        assert status == 422
        assert_error(body, "validation_failed")
        assert bad["card_number"] not in str(body)
    # Another user cannot see it.
    path = f"/api/v1/me/payment-methods/{card['payment_method_id']}"
    assert (await api.call("GET", path, headers=bob["headers"]))[0] == 404
    # Nowhere in the database, nowhere in the logs.
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    dump = "\n".join([
        str(r[0]) for t in tables for r in await pool.fetch(f'SELECT t::text FROM "{t}" t')])
    assert "4242" in dump  # last4 is kept ...
    assert CARD not in dump and "424242424242" not in dump  # ... the number is not
    assert f",{CVC}," not in dump and f'"{CVC}"' not in dump
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert CARD not in logged


async def test_admin_wallet_credit(api) -> None:
    user = await api.signup()
    path = f"/api/v1/admin/wallets/{user['user_id']}/credit"
    status, body = await api.call("POST", path, json={"amount": "25.50"}, headers=api.admin)
    assert status == 200 and body["balance"] == "25.50"
    status, body = await api.call("POST", path, json={"amount": "0.25"}, headers=api.admin)
    assert body["balance"] == "25.75"
    status, body = await api.call("POST", path, json={"amount": "1"}, headers=user["headers"])
    assert status == 403
    assert_error(body, "forbidden")
    status, body = await api.call("POST", "/api/v1/admin/wallets/999999/credit",
                                  json={"amount": "1"}, headers=api.admin)
    assert status == 404
