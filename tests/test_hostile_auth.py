"""Authorization reads the account, tokens can be revoked, credentials are defended:
role and token version come from the account (cached for seconds), unknown users'
tokens are refused, logins and sign-ups are throttled, weak passwords refused, scrypt at
OWASP's cost with transparent re-hash."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp.test_utils import TestClient

from accounts.passwords import Hasher, N, hash_password
from accounts.tokens import TokenSigner
from engine.settings import Settings
from gateway.app import create_app
from tests.conftest import SECRET, Api, GatewayServer, assert_error, make_settings

ADMIN_ONLY = "/api/v1/admin/coupons"


@pytest.fixture
async def other_gateway(settings, database):
    """A second app on the same Redis and Postgres: another worker process's view."""
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    yield Api(client)
    await client.close()


async def login(api: Api, email: str, password: str = "correct-horse-1") -> dict:
    status, body = await api.call("POST", "/api/v1/auth/login",
                                  json={"email": email, "password": password})
    assert status == 200, body
    return {"Authorization": f"Bearer {body['token']}"}


async def test_a_demoted_admin_loses_admin_powers_on_every_gateway(api, other_gateway,
                                                                   settings) -> None:
    user = await api.grant(await api.signup(), "admin")
    assert (await api.call("GET", ADMIN_ONLY, headers=user["headers"]))[0] == 200
    assert (await other_gateway.call("GET", ADMIN_ONLY, headers=user["headers"]))[0] == 200
    await api.call("PUT", f"/api/v1/admin/users/{user['user_id']}/role", headers=api.admin,
                   json={"role": "customer"}, expect=200)
    # The gateway that made the change knows at once; the other after its cache's TTL.
    status, body = await api.call("GET", ADMIN_ONLY, headers=user["headers"])
    assert status == 401 and "revoked" in body["error"]["message"]
    await asyncio.sleep(settings.account_cache_seconds + 0.2)
    assert (await other_gateway.call("GET", ADMIN_ONLY, headers=user["headers"]))[0] == 401
    # Signed in again: a customer's token, refused on admin routes.
    fresh = await login(api, user["email"])
    status, body = await api.call("GET", ADMIN_ONLY, headers=fresh)
    assert status == 403
    assert_error(body, "forbidden")


async def test_the_role_is_read_from_the_account_not_the_token(api, pool) -> None:
    user = await api.signup()
    forged_role = TokenSigner(secret=SECRET, ttl_seconds=60).issue(user["user_id"], "admin")
    status, _ = await api.call("GET", ADMIN_ONLY,
                               headers={"Authorization": f"Bearer {forged_role}"})
    assert status == 403  # the account is a customer's


@pytest.mark.parametrize("role", ["customer", "admin"])
async def test_tokens_of_unknown_users_are_refused(api, role) -> None:
    await api.signup()
    ghost = TokenSigner(secret=SECRET, ttl_seconds=60).issue(10**9 + 7, role)
    for path in (ADMIN_ONLY, "/api/v1/me", "/api/v1/cart"):
        status, body = await api.call("GET", path, headers={"Authorization": f"Bearer {ghost}"})
        assert status == 401, (path, body)
        assert_error(body, "unauthorized")


async def test_log_out_everywhere_revokes_every_token(api, other_gateway) -> None:
    user = await api.signup()
    second = await login(api, user["email"])
    for headers in (user["headers"], second):
        assert (await other_gateway.call("GET", "/api/v1/me", headers=headers))[0] == 200
    status, body = await api.call("POST", "/api/v1/auth/logout-all", headers=second)
    assert status == 200 and body == {"user_id": user["user_id"], "revoked": True}
    for gateway in (api, other_gateway):
        for headers in (user["headers"], second):
            # the other gateway may serve its cached standing for a moment
            for _ in range(50):
                status, _ = await gateway.call("GET", "/api/v1/me", headers=headers)
                if status == 401:
                    break
                await asyncio.sleep(0.1)
            assert status == 401
    assert (await api.call("GET", "/api/v1/me", headers=await login(api, user["email"])))[0] == 200


async def test_changing_the_password_revokes_older_tokens(api) -> None:
    user = await api.signup()
    status, body = await api.call("POST", "/api/v1/me/password", headers=user["headers"],
                                  json={"current_password": "wrong-one-99",
                                        "new_password": "a-new-long-secret"})
    assert status == 401
    status, body = await api.call("POST", "/api/v1/me/password", headers=user["headers"],
                                  json={"current_password": "correct-horse-1",
                                        "new_password": "a-new-long-secret"})
    assert status == 200, body
    assert (await api.call("GET", "/api/v1/me", headers=user["headers"]))[0] == 401
    fresh = {"Authorization": f"Bearer {body['token']}"}
    assert (await api.call("GET", "/api/v1/me", headers=fresh))[0] == 200
    await login(api, user["email"], "a-new-long-secret")


async def test_forty_wrong_passwords_are_throttled_and_the_right_one_works_after(api) -> None:
    user = await api.signup()
    statuses, retry_after = [], None
    for _ in range(40):
        resp = await api.client.post("/api/v1/auth/login",
                                     json={"email": user["email"], "password": "wrong-guess-1"})
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json()
            assert_error(body, "rate_limited")
            retry_after = int(resp.headers["Retry-After"])
            assert retry_after >= 1
    assert set(statuses) == {401, 429}
    assert statuses.index(429) <= 10, statuses  # well before the end
    assert statuses.count(401) <= 10, statuses  # the delay grows: few guesses get through
    # A stranger's guesses did not lock the account for good: after the delay it opens.
    waits = []
    for _ in range(4):
        resp = await api.client.post("/api/v1/auth/login", json={
            "email": user["email"], "password": "correct-horse-1"})
        if resp.status != 429:
            break
        waits.append(int(resp.headers["Retry-After"]))
        await asyncio.sleep(waits[-1] + 0.1)
    assert resp.status == 200, (statuses, waits, resp.status)
    # A success clears the account's count: the next wrong password is a plain 401.
    status, dbg = await api.call("POST", "/api/v1/auth/login",
                               json={"email": user["email"], "password": "wrong-guess-1"})
    assert status == 401, dbg


async def test_guessing_unknown_emails_from_one_address_is_throttled(api) -> None:
    statuses = [(await api.client.post("/api/v1/auth/login", json={
        "email": f"nobody-{i}@example.com", "password": "wrong-guess-1"})).status
        for i in range(30)]
    assert statuses[:20] == [401] * 20 and 429 in statuses[20:]


async def test_signups_are_throttled_per_address(database) -> None:
    client = TestClient(GatewayServer(create_app(make_settings(signups_per_hour=3))))
    await client.start_server()
    try:
        statuses = []
        for _ in range(5):
            resp = await client.post("/api/v1/auth/signup", json={
                "email": f"u-{uuid.uuid4().hex[:10]}@example.com",
                "password": "correct-horse-1", "name": "N"})
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert_error(await resp.json(), "rate_limited")
        assert statuses == [201, 201, 201, 429, 429]
    finally:
        await client.close()


@pytest.mark.parametrize("password", ["short", "password", " " * 12, "a" * 12, "abababababab",
                                      "password123", "Qwertyuiop", "1234567890",
                                      "correcthorsebatterystaple"])
async def test_weak_passwords_are_refused(api, password) -> None:
    status, body = await api.call("POST", "/api/v1/auth/signup", json={
        "email": "weak@example.com", "password": password, "name": "W"})
    assert status == 422, (password, body)
    assert_error(body, "validation_failed")
    assert body["error"]["details"][0]["path"] == "$.password"


def test_scrypt_runs_at_owasp_cost_by_default() -> None:
    assert N == 2**17 and Settings().password_cost == 17
    assert Hasher().n == 2**17
    assert Hasher().needs_rehash(hash_password("x" * 12, n=2**14))


async def test_an_old_hash_is_replaced_on_login(api, pool, settings) -> None:
    user = await api.signup()
    old = hash_password("correct-horse-1", n=2**11)
    await pool.execute("UPDATE users SET password_hash = $2 WHERE user_id = $1",
                       user["user_id"], old)
    await login(api, user["email"])
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE user_id = $1",
                                 user["user_id"])
    assert stored != old and stored.split("$")[1] == str(2**settings.password_cost)
    await login(api, user["email"])  # and the new hash verifies


async def test_the_reservation_path_reads_the_standing_from_redis_not_postgres(
        api, other_gateway) -> None:
    from gateway.context import SERVICES
    from tests.conftest import create_sale

    user = await api.signup()
    sale = await create_sale(api, quantity=3)

    class NoPostgres:
        async def fetch(self, *args, **kwargs):
            raise AssertionError("the standing was read from Postgres")

    standings = other_gateway.client.app[SERVICES].standings
    standings._pool = NoPostgres()  # a cold worker: its process cache is empty
    status, body = await other_gateway.call(
        "POST", f"/api/v1/sales/{sale['sale_id']}/reservations", headers=user["headers"],
        json={"quantity": 1, "idempotency_key": "hot"})
    assert status == 201, body


async def test_a_slow_body_is_timed_out_and_slow_senders_are_capped(database) -> None:
    client = TestClient(GatewayServer(create_app(make_settings(body_timeout=0.5,
                                                            body_reads_per_client=3))))
    await client.start_server()
    try:
        host, port = client.server.host, client.server.port

        async def trickle() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), 30)
            writer.close()
            return answer

        answers = await asyncio.gather(*(trickle() for _ in range(6)))
        statuses = sorted(int(a.split(b" ", 2)[1]) for a in answers)
        # three were read until the timeout, the others refused at once
        assert statuses == [408] * 3 + [429] * 3, answers
        assert all(b'"error"' in a for a in answers)
    finally:
        await client.close()


async def test_owner_routes_answer_for_owners_only_and_staff_use_admin_routes(api) -> None:
    from tests.orders_support import add_to_cart, place, product, shopper

    buyer = await shopper(api)
    await add_to_cart(api, buyer, await product(api, price="5.00"))
    _, order = await place(api, buyer)
    sale = await create_sale_for(api)
    _, hold = await api.call("POST", f"/api/v1/sales/{sale}/reservations",
                             headers=buyer["headers"], expect=201,
                             json={"quantity": 1, "idempotency_key": "own"})
    staff = await api.grant(await api.signup(), "admin")
    owner_paths = [("GET", f"/api/v1/orders/{order['order_id']}"),
                   ("POST", f"/api/v1/orders/{order['order_id']}/cancel"),
                   ("GET", f"/api/v1/orders/{order['order_id']}/returns"),
                   ("GET", f"/api/v1/reservations/{hold['reservation_id']}"),
                   ("DELETE", f"/api/v1/reservations/{hold['reservation_id']}")]
    for method, path in owner_paths:
        status, body = await api.call(method, path, headers=api.admin)
        assert status == 403, (path, body)  # the operator token is nobody's account
        status, body = await api.call(method, path, headers=staff["headers"])
        assert status == 404, (path, body)  # an admin user acts as themselves here
    for path in ("/api/v1/me", "/api/v1/cart", "/api/v1/me/addresses"):
        assert (await api.call("GET", path, headers=api.admin))[0] == 403
    # Staff support has its own routes.
    for headers in (api.admin, staff["headers"]):
        _, seen = await api.call("GET", f"/api/v1/admin/orders/{order['order_id']}",
                                 headers=headers, expect=200)
        assert seen["order_id"] == order["order_id"]
        _, held = await api.call("GET", f"/api/v1/admin/reservations/{hold['reservation_id']}",
                                 headers=headers, expect=200)
        assert held["status"] == "held"
    _, released = await api.call("DELETE", f"/api/v1/admin/reservations/{hold['reservation_id']}",
                                 headers=api.admin, expect=200)
    assert released["status"] == "released"
    _, cancelled = await api.call("POST", f"/api/v1/admin/orders/{order['order_id']}/cancel",
                                  headers=staff["headers"], expect=200)
    assert cancelled["status"] == "cancelled"
    assert (await api.call("GET", f"/api/v1/admin/orders/{order['order_id']}",
                           headers=buyer["headers"]))[0] == 403


async def create_sale_for(api) -> int:
    from tests.conftest import create_sale
    return (await create_sale(api, quantity=2))["sale_id"]


async def test_guessing_the_current_password_is_throttled_like_a_login(api) -> None:
    user = await api.signup()
    statuses = [(await api.call("POST", "/api/v1/me/password", headers=user["headers"],
                                json={"current_password": f"guess-{i:06d}",
                                      "new_password": "a-new-long-secret"}))[0]
                for i in range(12)]
    assert set(statuses) == {401, 429} and statuses.index(429) <= 8, statuses
