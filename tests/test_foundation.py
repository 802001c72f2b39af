"""Settings, migrations, the error contract, health, metrics, OpenAPI."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from engine.migrate import available_migrations, migrate
from engine.settings import DEV_SECRET, Settings
from tests.conftest import assert_error


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/flashsale"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.secret == DEV_SECRET and s.uses_dev_secret
    assert s.rate_limit > 0


def test_settings_overrides_from_environment() -> None:
    s = Settings.from_env({
        "FLASHSALE_REDIS_URL": "redis://r:1/2", "FLASHSALE_DATABASE_URL": "postgresql://x/y",
        "FLASHSALE_PORT": "9000", "FLASHSALE_RATE_LIMIT": "0", "FLASHSALE_SECRET": "s" * 40,
        "FLASHSALE_ADMIN_TOKEN": "adm", "FLASHSALE_TAX_RATE": "0.2"})
    assert s.redis_url == "redis://r:1/2" and s.database_url == "postgresql://x/y"
    assert s.port == 9000 and s.rate_limit == 0 and s.admin_token == "adm"
    assert s.tax_rate == Decimal("0.2") and not s.uses_dev_secret


def test_settings_reject_bad_numbers() -> None:
    with pytest.raises(ValueError, match="FLASHSALE_PORT"):
        Settings.from_env({"FLASHSALE_PORT": "eighty"})


async def test_migrate_twice_is_a_no_op(database: str, pool) -> None:
    assert await migrate(database) == []
    names = [r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations ORDER BY 1")]
    assert names == [m.name for m in available_migrations()]
    for table in ("users", "addresses", "payment_methods", "categories", "products",
                  "inventory", "flash_sales", "sale_reservations", "orders", "order_items"):
        assert await pool.fetchval("SELECT to_regclass($1)", table) is not None, table
    cols = {r["column_name"] for r in await pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'inventory'")}
    assert {"product_id", "available_qty", "reserved_qty", "version"} <= cols


async def test_health_ready_metrics(api) -> None:
    assert await api.call("GET", "/healthz") == (200, {"status": "ok"})
    status, body = await api.call("GET", "/readyz")
    assert status == 200 and body["checks"] == {"redis": "ok", "postgres": "ok"}
    resp = await api.client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE flashsale_http_requests_total counter" in text
    assert 'flashsale_http_requests_total{method="GET",route="/readyz",status="200"}' in text


async def test_openapi_describes_every_route(api) -> None:
    status, doc = await api.call("GET", "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    ops = {(path, method) for path, item in doc["paths"].items() for method in item}
    for route in api.client.app.router.routes():
        path = route.resource.canonical
        if path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
            assert (path, route.method.lower()) in ops, (path, route.method)
    signup = doc["paths"]["/api/v1/auth/signup"]["post"]
    assert "201" in signup["responses"] and "422" in signup["responses"]
    assert "requestBody" in signup


async def test_error_table_rows(api) -> None:
    # 400 invalid_json
    status, body = await api.call("POST", "/api/v1/auth/signup", data=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert status == 400
    assert_error(body, "invalid_json")
    # 401 unauthorized: missing token
    status, body = await api.call("GET", "/api/v1/me")
    assert status == 401
    assert_error(body, "unauthorized")
    # 403 forbidden: a customer on an admin endpoint
    user = await api.signup()
    status, body = await api.call("POST", "/api/v1/admin/categories", json={"name": "X"},
                                  headers=user["headers"])
    assert status == 403
    assert_error(body, "forbidden")
    # 404 not_found: unknown path and unknown id
    status, body = await api.call("GET", "/api/v1/nothing-here")
    assert status == 404
    assert_error(body, "not_found")
    status, body = await api.call("GET", "/api/v1/products/999999")
    assert status == 404
    assert_error(body, "not_found")
    status, body = await api.call("GET", "/api/v1/products/abc")
    assert status == 404
    # 409 conflict: email taken
    status, body = await api.call("POST", "/api/v1/auth/signup", json={
        "email": user["email"], "password": "whatever-123", "name": "Dup"})
    assert status == 409
    assert_error(body, "conflict")
    # 413 payload_too_large
    status, body = await api.call("POST", "/api/v1/auth/signup",
                                  data=b'{"email": "' + b"a" * 70_000 + b'"}',
                                  headers={"Content-Type": "application/json"})
    assert status == 413
    assert_error(body, "payload_too_large")
    # 422 validation_failed: unknown field, wrong type, short password
    for payload, path in (
        ({"email": "x@y.zz", "password": "long-enough", "name": "N", "role": "admin"}, "$"),
        ({"email": "x@y.zz", "password": 12345678, "name": "N"}, "$.password"),
        ({"email": "x@y.zz", "password": "short", "name": "N"}, "$.password"),
    ):
        status, body = await api.call("POST", "/api/v1/auth/signup", json=payload)
        assert status == 422, body
        assert_error(body, "validation_failed")
        assert body["error"]["details"][0]["path"] == path
    # 405 in the same shape
    status, body = await api.call("DELETE", "/api/v1/auth/signup")
    assert status == 405
    assert_error(body, "method_not_allowed")


async def test_money_fields_refuse_floats_beyond_cents_and_negatives(api) -> None:
    seller = await api.grant(await api.signup(), "seller")
    for price, ok in (("19.99", True), ("19.999", False), ("-1", False), ("NaN", False),
                      (19.5, False), ("1e3", False), (" 1.00", False), ("\uff11.00", False),
                      ("0", False), ("0.00", False), ("7", True), ("0.01", True)):
        status, body = await api.call("POST", "/api/v1/seller/products", headers=seller["headers"],
                                      json={"name": "Thing", "price": price})
        assert (status == 201) == ok, (price, status, body)
        if ok:
            assert body["price"] == str(Decimal(str(price)).quantize(Decimal("0.01")))
        else:
            assert_error(body, "validation_failed")


async def test_unhandled_error_is_500_in_contract_shape_with_request_id(api, caplog) -> None:
    from gateway.context import SERVICES

    svc = api.client.app[SERVICES]

    secret = f"secret-{uuid.uuid4().hex}"  # runtime data, as a driver error could quote

    async def boom(user_id: int):
        raise RuntimeError(f"kaboom: {secret}")

    user = await api.signup()
    original = svc.accounts.get_user
    svc.accounts.get_user = boom
    try:
        status, body = await api.call("GET", "/api/v1/me", headers=user["headers"])
    finally:
        svc.accounts.get_user = original
    assert status == 500
    assert_error(body, "internal_error")
    assert "kaboom" not in str(body) and "Traceback" not in str(body)
    request_id = body["error"]["details"]["request_id"]
    logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert logged and "RuntimeError" in logged[0] and "boom" in logged[0]  # type and frame
    assert not any(secret in r.getMessage() + str(r.exc_info or "")
                   for r in caplog.records)
