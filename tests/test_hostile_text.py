"""The one text policy at the edge: ids in paths are ASCII digits, no string field takes
a control character, card numbers are ASCII digits, money is a decimal string. Hostile
input is answered 404 or 422 in the contract's shape, never 500, and nothing secret
reaches a log line."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import assert_error, create_sale
from tests.orders_support import CARD_OK, order_body, shopper

# Every C0 and C1 control except tab, newline and carriage return, and DEL.
CONTROLS = [chr(c) for c in [*range(0x00, 0x20), *range(0x7f, 0xa0)] if chr(c) not in "\t\n\r"]
# Unicode digits that str.isdigit() accepts but are not ASCII.
ODD_DIGITS = ["\u00b2", "\uff11", "\u0661", "\u0967", "\U0001d7cf", "1\u00b2", "\uff14\uff12"]


@pytest.mark.parametrize("path", [
    "/api/v1/products/{}", "/api/v1/orders/{}", "/api/v1/sales/{}",
    "/api/v1/me/addresses/{}", "/api/v1/me/payment-methods/{}", "/api/v1/reservations/{}",
    "/api/v1/admin/coupons/{}", "/api/v1/products/{}/reviews"])
async def test_odd_ids_in_paths_are_unknown(api, caplog, path) -> None:
    user = await api.signup()
    await api.call("POST", "/api/v1/seller/products", headers=api.admin, expect=201,
                   json={"name": "One", "price": "1.00"})
    headers = api.admin if "admin" in path else user["headers"]
    for raw in [*ODD_DIGITS, *(f"1{c}" for c in ("%00", "%01", "%1f", "%7f", "%c2%85"))]:
        status, body = await api.call("GET", path.format(raw), headers=headers)
        assert status == 404, (raw, status, body)
        assert_error(body, "not_found")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_control_characters_in_any_body_field_are_refused_with_its_path(api) -> None:
    buyer = await shopper(api)
    sale = await create_sale(api, quantity=5)
    address = {"line1": "1 Main St", "line2": "Flat 2", "city": "Springfield",
               "postal_code": "12345", "country": "US"}
    targets = [
        ("/api/v1/me/addresses", buyer["headers"], address),
        ("/api/v1/auth/signup", None, {"email": "a@example.com", "password": "Tr0ub4dor&3x",
                                        "name": "Ann"}),
        ("/api/v1/admin/coupons", api.admin, {"code": "SAVE10", "percent_off": "10"}),
        (f"/api/v1/sales/{sale['sale_id']}/reservations", buyer["headers"],
         {"quantity": 1, "idempotency_key": "key-1"}),
        ("/api/v1/orders", buyer["headers"], order_body(buyer, coupon_code="SAVE10")),
        ("/api/v1/seller/products", api.admin, {"name": "Lamp", "price": "9.99",
                                                "description": "bright", "brand": "Acme"}),
    ]
    for url, headers, body in targets:
        for field, value in body.items():
            if not isinstance(value, str):
                continue
            for control in CONTROLS:
                bad = {**body, field: value[:1] + control + value[1:]}
                status, answer = await api.call("POST", url, headers=headers, json=bad)
                assert status == 422, (url, field, hex(ord(control)), status, answer)
                assert_error(answer, "validation_failed")
                assert answer["error"]["details"][0]["path"] == f"$.{field}", answer
    # Nothing was stored on the way: only the shopper's own first address exists.
    _, addresses = await api.call("GET", "/api/v1/me/addresses", headers=buyer["headers"])
    assert [a["address_id"] for a in addresses] == [buyer["address_id"]]


async def test_control_characters_in_query_values_are_refused(api) -> None:
    for control in ("\x00", "\x07", "\x1b", "\x9b"):
        resp = await api.client.get("/api/v1/search", params={"q": f"lap{control}top"})
        body = await resp.json()
        assert resp.status == 422, (hex(ord(control)), body)
        assert body["error"]["details"][0]["path"] == "query.q"


async def test_multiline_text_keeps_its_newlines(api) -> None:
    buyer = await api.signup()
    status, address = await api.call("POST", "/api/v1/me/addresses", headers=buyer["headers"],
                                     json={"line1": "1 Main St", "line2": "c/o Ann\tB",
                                           "city": "Springfield", "postal_code": "12345",
                                           "country": "US"})
    assert status == 201 and address["line2"] == "c/o Ann\tB"


async def test_card_numbers_are_ascii_digits_and_never_logged(api, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    buyer = await api.signup()
    fullwidth = CARD_OK.translate({ord(d): 0xff10 + int(d) for d in "0123456789"})
    arabic = CARD_OK.translate({ord(d): 0x0660 + int(d) for d in "0123456789"})
    for number, cvc in ((fullwidth, "123"), (arabic, "123"), (CARD_OK, "\uff11\uff12\uff13"),
                        (CARD_OK + "\x00", "123")):
        status, body = await api.call("POST", "/api/v1/me/payment-methods",
                                      headers=buyer["headers"],
                                      json={"type": "card", "card_number": number,
                                            "exp_month": 12, "exp_year": 2099, "cvc": cvc})
        assert status == 422, (number, status, body)
        assert_error(body, "validation_failed")
        assert CARD_OK not in str(body) and fullwidth not in str(body)
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    for secret in ("tok_sim", CARD_OK, fullwidth, arabic, CARD_OK[-8:]):
        assert secret not in logged
    _, methods = await api.call("GET", "/api/v1/me/payment-methods", headers=buyer["headers"])
    assert methods == []


@pytest.mark.parametrize("amount", [25, 25.5, "1e3", " 25.00", "25.00 ", "\uff12\uff15",
                                    "+25", "25.001", "0x19", "-0", "", "0"])
async def test_money_is_a_positive_decimal_string(api, amount) -> None:
    user = await api.signup()
    status, body = await api.call("POST", f"/api/v1/admin/wallets/{user['user_id']}/credit",
                                  headers=api.admin, json={"amount": amount})
    assert status == 422, (amount, status, body)
    assert_error(body, "validation_failed")
    assert body["error"]["details"][0]["path"] == "$.amount"


async def test_addresses_and_payment_methods_are_capped_per_user_under_concurrency(api) -> None:
    import asyncio

    from accounts.service import MAX_ADDRESSES, MAX_PAYMENT_METHODS
    user = await api.signup()
    address = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345",
               "country": "US"}
    for url, body, cap in (("/api/v1/me/addresses", address, MAX_ADDRESSES),
                           ("/api/v1/me/payment-methods", {"type": "cod"},
                            MAX_PAYMENT_METHODS)):
        results = await asyncio.gather(*(api.call("POST", url, headers=user["headers"],
                                                  json=body) for _ in range(cap + 5)))
        assert sorted(status for status, _ in results) == [201] * cap + [422] * 5
        _, listed = await api.call("GET", url, headers=user["headers"])
        assert len(listed) == cap


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/v1/products?q=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
    b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_errors_of_the_http_parser_come_in_the_contract_shape(app_client,
                                                                    request_bytes) -> None:
    import asyncio
    import json

    reader, writer = await asyncio.open_connection(app_client.server.host,
                                                   app_client.server.port)
    writer.write(request_bytes)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, raw[:300]
    assert b"application/json" in head.lower(), head
    answer = json.loads(body)
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message", "details"}
