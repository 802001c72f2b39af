"""The console and the API reference in a real browser: headless Chromium (the system's,
driven over the DevTools protocol by tests/browser.py), offline but for the gateway under
test. Screenshots land in tests/artifacts/.

Skipped, with the reason, when no Chromium is installed (`make test` installs Debian's
where it can).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.browser import Browser, Page, find_chromium
from tests.conftest import (
    ADMIN_TOKEN,
    TEST_REDIS_URL,
    GatewayServer,
    assert_error,
    create_product,
    create_sale,
    make_settings,
)
from tests.proxy import TcpProxy
from tests.reconciler_proc import ReconcilerProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOARD = "/api/v1/admin/sales"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (chromium, chromium-browser, google-chrome or "
                    "FLASHSALE_CHROMIUM); `make test` installs Debian's chromium when run "
                    "as root, or install it by hand to run the browser tests")
    chromium = await Browser(executable).start()
    yield chromium
    await chromium.close()


@pytest.fixture
async def page(browser: Browser, app_client) -> AsyncIterator[Page]:
    tab = await browser.new_page()
    yield tab
    await tab.close()


def url(app_client, path: str) -> str:
    return str(app_client.make_url(path))


def assert_stayed_home(page: Page, app_client, *, secret: str | None = None) -> None:
    """Every request went to the gateway under test, none failed, nothing threw, and
    the token never appeared in a URL."""
    origin = urlsplit(url(app_client, "/")).netloc
    for request in page.requests:
        parts = urlsplit(request)
        assert parts.scheme in ("http", "data") or request == "about:blank", request
        if parts.scheme == "http":
            assert parts.netloc == origin, request
        if secret:
            assert secret not in request, request
    assert page.failed == [], page.failed
    assert page.errors == [], page.errors


def card(sale_id: int, field: str) -> str:
    return (f"(document.querySelector('[data-sale-id=\"{sale_id}\"] [data-field=\"{field}\"]')"
            f" || {{}}).textContent")


async def reserve_many(api, sale_id: int, buyers: int) -> list[int]:
    users = [await api.signup() for _ in range(buyers)]

    async def one(user: dict) -> int:
        status, _ = await api.call(
            "POST", f"/api/v1/sales/{sale_id}/reservations", headers=user["headers"],
            json={"quantity": 1, "idempotency_key": uuid.uuid4().hex})
        return status
    return list(await asyncio.gather(*(one(u) for u in users)))


async def test_console_shows_each_sale_and_follows_reservations(api, app_client, page,
                                                                 settings) -> None:
    hot = await create_sale(api, quantity=20)
    small = await create_sale(api, quantity=5, per_user_limit=2)
    await page.goto(url(app_client, f"/console#token={ADMIN_TOKEN}"))
    await page.wait_for(f"{card(hot['sale_id'], 'remaining')} === '20'"
                        f" && {card(small['sale_id'], 'remaining')} === '5'")
    assert await page.evaluate(card(hot["sale_id"], "initial")) == "20"
    assert await page.evaluate(card(hot["sale_id"], "status")) == "active"
    assert await page.evaluate(card(hot["sale_id"], "product_name")) == "Hot Gadget"
    assert await page.evaluate(card(hot["sale_id"], "books")) == "books balanced"
    # The fragment is gone from the address bar; the token lives in session storage.
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("sessionStorage.getItem('flashsale.token')") == ADMIN_TOKEN

    # Buyers reserve while no reconciler runs: Redis's figures move at once, and the
    # board shows the events Postgres has not applied yet.
    assert await reserve_many(api, hot["sale_id"], 7) == [201] * 7
    await page.wait_for(f"{card(hot['sale_id'], 'remaining')} === '13'"
                        f" && {card(hot['sale_id'], 'held')} === '7'"
                        f" && {card(hot['sale_id'], 'reconciler_lag')} !== '0'")
    assert await page.evaluate(card(small["sale_id"], "remaining")) == "5"
    _, listed = await api.call("GET", BOARD, headers=api.admin, expect=200)
    by_id = {s["sale_id"]: s for s in listed["items"]}
    assert by_id[hot["sale_id"]]["remaining"] == 13

    reconciler = ReconcilerProcess(settings, "console").start()
    try:
        await reconciler.ready()
        # The reconciler catches up: no lag, and the admissions chart draws the burst
        # (admissions_total counts what Postgres has applied).
        chart_peak = (f"parseFloat(document.querySelector('[data-sale-id=\"{hot['sale_id']}\"]"
                      f" .chart').dataset.peak)")
        await page.wait_for(f"{card(hot['sale_id'], 'reconciler_lag')} === '0'"
                            f" && {chart_peak} > 0")
        # A second burst: the board keeps following.
        assert await reserve_many(api, hot["sale_id"], 3) == [201] * 3
        await page.wait_for(f"{card(hot['sale_id'], 'remaining')} === '10'"
                            f" && {card(hot['sale_id'], 'held')} === '10'"
                            f" && {card(hot['sale_id'], 'reconciler_lag')} === '0'")
        assert await page.evaluate(card(hot["sale_id"], "books")) == "books balanced"
        await page.screenshot("console")
    finally:
        reconciler.stop()
    assert_stayed_home(page, app_client, secret=ADMIN_TOKEN)


@pytest.mark.parametrize("who", ["wrong", "buyer"])
async def test_a_refused_token_sees_only_the_sign_in(api, app_client, page, who: str) -> None:
    sale = await create_sale(api, quantity=9)
    token = "not-the-operator-token" if who == "wrong" else (await api.signup())["token"]
    await page.goto(url(app_client, f"/console#token={token}"))
    await page.wait_for("!document.getElementById('signin').hidden"
                        " && document.getElementById('signin-error').textContent !== ''")
    assert await page.evaluate("document.getElementById('board').hidden") is True
    assert await page.evaluate("document.querySelectorAll('[data-sale-id]').length") == 0
    body = await page.text()
    assert "Hot Gadget" not in body and f"#{sale['sale_id']} " not in body
    assert await page.evaluate("sessionStorage.getItem('flashsale.token')") is None
    assert await page.evaluate("location.hash") == ""
    if who == "wrong":
        await page.screenshot("console-wrong-token")
    # The page asked the API with that token once and was refused; nothing else leaked.
    assert all("401" in e or "403" in e for e in page.errors), page.errors
    page.errors.clear()
    assert_stayed_home(page, app_client, secret=token)


async def test_sign_in_with_the_field(api, app_client, page) -> None:
    sale = await create_sale(api, quantity=3)
    await page.goto(url(app_client, "/console"))
    await page.wait_for("!document.getElementById('signin').hidden")
    assert await page.evaluate("document.querySelectorAll('[data-sale-id]').length") == 0
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for(f"{card(sale['sale_id'], 'remaining')} === '3'")
    await page.click("#sign-out")
    await page.wait_for("document.querySelectorAll('[data-sale-id]').length === 0"
                        " && !document.getElementById('signin').hidden")
    assert await page.evaluate("sessionStorage.getItem('flashsale.token')") is None
    assert_stayed_home(page, app_client, secret=ADMIN_TOKEN)


async def confirm_action(page: Page, sale_id: int, action: str) -> None:
    await page.click(f'[data-sale-id="{sale_id}"] button[data-action="{action}"]')
    await page.wait_for("document.getElementById('confirm').open")
    await page.click("#confirm-ok")


async def test_pause_resume_and_end_from_the_page(api, app_client, page) -> None:
    sale = await create_sale(api, quantity=4)
    sale_id = sale["sale_id"]
    buyer = await api.signup()
    await page.goto(url(app_client, f"/console#token={ADMIN_TOKEN}"))
    await page.wait_for(f"{card(sale_id, 'status')} === 'active'")

    # Cancel leaves the sale as it was.
    await page.click(f'[data-sale-id="{sale_id}"] button[data-action="end"]')
    await page.wait_for("document.getElementById('confirm').open")
    assert "cannot be undone" in await page.text("#confirm-text")
    await page.click("#confirm-cancel")
    assert await page.evaluate("document.getElementById('confirm').open") is False
    _, board = await api.call("GET", f"{BOARD}/{sale_id}", headers=api.admin, expect=200)
    assert board["status"] == "active"

    await confirm_action(page, sale_id, "pause")
    await page.wait_for(f"{card(sale_id, 'status')} === 'paused'")
    _, board = await api.call("GET", f"{BOARD}/{sale_id}", headers=api.admin, expect=200)
    assert board["status"] == "paused"
    status, body = await api.call("POST", f"/api/v1/sales/{sale_id}/reservations",
                                  headers=buyer["headers"],
                                  json={"quantity": 1, "idempotency_key": "while-paused"})
    assert status == 409
    assert_error(body, "sale_not_active")
    await page.screenshot("console-paused")

    await confirm_action(page, sale_id, "resume")
    await page.wait_for(f"{card(sale_id, 'status')} === 'active'")
    _, board = await api.call("GET", f"{BOARD}/{sale_id}", headers=api.admin, expect=200)
    assert board["status"] == "active"
    await api.call("POST", f"/api/v1/sales/{sale_id}/reservations", headers=buyer["headers"],
                   json={"quantity": 1, "idempotency_key": "after-resume"}, expect=201)

    await confirm_action(page, sale_id, "end")
    await page.wait_for(f"{card(sale_id, 'status')} === 'ended'")
    _, board = await api.call("GET", f"{BOARD}/{sale_id}", headers=api.admin, expect=200)
    assert board["status"] == "ended"
    assert await page.evaluate(
        f"document.querySelectorAll('[data-sale-id=\"{sale_id}\"] button').length") == 0
    assert "now ended" in await page.text("#notice")
    assert_stayed_home(page, app_client, secret=ADMIN_TOKEN)


async def test_a_move_another_operator_made_first_is_refused_clearly(api, app_client,
                                                                     page) -> None:
    """The page asked to pause, but someone ended the sale meanwhile: the API refuses the
    move (409) and the page says why, then shows the sale as it is."""
    sale = await create_sale(api, quantity=4)
    sale_id = sale["sale_id"]
    await page.goto(url(app_client, f"/console#token={ADMIN_TOKEN}"))
    await page.wait_for(f"{card(sale_id, 'status')} === 'active'")
    await page.click(f'[data-sale-id="{sale_id}"] button[data-action="pause"]')
    await page.wait_for("document.getElementById('confirm').open")
    await api.call("POST", f"{BOARD}/{sale_id}/end", headers=api.admin, expect=200)
    await page.click("#confirm-ok")
    notice = await page.wait_for(
        "document.getElementById('notice').className.includes('error')"
        " && document.getElementById('notice').textContent")
    assert notice.startswith(f"Could not pause sale #{sale_id}: "), notice
    await page.wait_for(f"{card(sale_id, 'status')} === 'ended'")
    _, board = await api.call("GET", f"{BOARD}/{sale_id}", headers=api.admin, expect=200)
    assert board["status"] == "ended"
    page.errors[:] = [e for e in page.errors if "409" not in e]
    assert_stayed_home(page, app_client, secret=ADMIN_TOKEN)


async def test_the_status_filter_shows_only_that_status(api, app_client, page) -> None:
    running = await create_sale(api, quantity=2)
    halted = await create_sale(api, quantity=2)
    await api.call("POST", f"{BOARD}/{halted['sale_id']}/pause", headers=api.admin, expect=200)
    await page.goto(url(app_client, f"/console#token={ADMIN_TOKEN}"))
    shown = "[...document.querySelectorAll('[data-sale-id]')].map(e => e.dataset.saleId).join()"
    await page.wait_for(f"{shown} === '{halted['sale_id']},{running['sale_id']}'")
    for status, expected in (("paused", halted), ("active", running)):
        await page.evaluate("(() => { const s = document.getElementById('status-filter');"
                            f" s.value = '{status}'; s.dispatchEvent(new Event('change')); }})()")
        await page.wait_for(f"{shown} === '{expected['sale_id']}'")
        assert await page.evaluate(card(expected["sale_id"], "status")) == status
    assert_stayed_home(page, app_client, secret=ADMIN_TOKEN)


async def test_seller_text_is_shown_as_text(api, app_client, page) -> None:
    """A product name is seller input: the board shows it, never runs it."""
    name = '<img src=x onerror="window.pwned=1">Gadget</b>'
    product = await create_product(api, stock=3, name=name)
    await api.call("POST", BOARD, headers=api.admin, expect=201, json={
        "product_id": product["product_id"], "quantity": 3, "price": "1.00"})
    await page.goto(url(app_client, f"/console#token={ADMIN_TOKEN}"))
    sale_id = await page.wait_for("(document.querySelector('[data-sale-id]') || {}).dataset"
                                  " && document.querySelector('[data-sale-id]').dataset.saleId")
    assert await page.evaluate(card(sale_id, "product_name")) == name
    assert await page.evaluate("document.querySelectorAll('#sales img').length") == 0
    assert await page.evaluate("window.pwned") is None
    assert_stayed_home(page, app_client, secret=ADMIN_TOKEN)


async def test_waiting_room_figures_are_shown_when_a_sale_has_them(app_client, page) -> None:
    """The board's waiting_room is null until the waiting-room work fills it; any figures
    it carries are shown by name."""
    await page.goto(url(app_client, "/console"))
    board = {"sale_id": 7, "product_id": 1, "product_name": "Hot Gadget", "price": "9.99",
             "status": "active", "initial": 10, "remaining": 4, "held": 5, "confirmed": 1,
             "released": 0, "expired": 0, "starts_at": "2026-01-01T00:00:00Z", "ends_at": None,
             "per_user_limit": 1, "hold_seconds": 600, "reconciler_lag": 0,
             "books_balanced": False, "books_mismatch_units": 2, "admissions_total": 6,
             "waiting_room": {"queued": 120, "passes_issued": 30, "window": {"open": 5}}}
    text = await page.evaluate(
        f"card({json.dumps(board)}, [[0, 0], [2000, 6]]).innerText")
    assert "queued: 120" in text and "passes issued: 30" in text
    assert 'window: {"open":5}' in text
    assert "books off by 2 units" in text
    board["waiting_room"] = None
    text = await page.evaluate(f"card({json.dumps(board)}, [[0, 0]]).innerText")
    assert "waiting room" not in text


async def test_docs_render_offline_and_try_it_with_a_bearer_token(api, app_client,
                                                                   page) -> None:
    _, doc = await api.call("GET", "/api/v1/openapi.json", expect=200)
    operations = sum(len(methods) for methods in doc["paths"].values())
    await page.goto(url(app_client, "/docs"))
    await page.wait_for(f"document.querySelectorAll('.opblock').length === {operations}",
                        timeout=60)
    shown = await page.evaluate(
        "[...document.querySelectorAll('.opblock-summary-path')]"
        ".map(e => e.getAttribute('data-path'))")
    assert set(shown) == set(doc["paths"])
    await page.screenshot("docs")

    # A token signed in to the console in this tab is offered to "Authorize" already.
    await page.evaluate(f"sessionStorage.setItem('flashsale.token', {json.dumps(ADMIN_TOKEN)})")
    await page.goto(url(app_client, "/docs"))
    await page.wait_for("document.querySelector('.auth-wrapper .authorize.locked') !== null")
    assert await page.evaluate(
        "window.ui.authSelectors.authorized().toJS().bearer.value") == ADMIN_TOKEN
    await page.evaluate("sessionStorage.clear()")
    await page.goto(url(app_client, "/docs"))
    await page.wait_for(f"document.querySelectorAll('.opblock').length === {operations}",
                        timeout=60)

    # "Authorize" with a bearer token, then "Try it out" on GET /api/v1/me.
    user = await api.signup(name="Docs Reader")
    await page.click(".auth-wrapper .authorize")
    await page.wait_for("document.querySelector('.modal-ux input') !== null")
    await page.evaluate(
        "(() => { const input = document.querySelector('.modal-ux input');"
        " const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;"
        f" set.call(input, {json.dumps(user['token'])});"
        " input.dispatchEvent(new Event('input', {bubbles: true})); })()")
    await page.click(".modal-ux .auth-btn-wrapper button.authorize")
    await page.click(".modal-ux .btn-done")
    me = "#operations-accounts-accounts_me"
    await page.wait_for(f"document.querySelector('{me}') !== null")
    await page.click(f"{me} .opblock-summary-control")
    await page.wait_for(f"document.querySelector('{me} .try-out__btn') !== null")
    await page.click(f"{me} .try-out__btn")
    await page.wait_for(f"document.querySelector('{me} .execute') !== null")
    await page.click(f"{me} .execute")
    code = await page.wait_for(
        f"(document.querySelector('{me} .live-responses-table tbody .response-col_status')"
        " || {}).textContent")
    assert code.strip().startswith("200"), code
    assert "Docs Reader" in await page.text(f"{me} .live-responses-table")
    await page.screenshot("docs-try-it")
    assert_stayed_home(page, app_client)


async def test_console_rides_out_a_redis_outage(api, app_client, page) -> None:
    """While Redis is cut the board keeps its last figures and says they are stale; when
    Redis returns it goes live again by itself."""
    sale = await create_sale(api, quantity=6)
    sale_id = sale["sale_id"]
    parts = urlsplit(TEST_REDIS_URL)
    proxy = await TcpProxy(parts.hostname, parts.port or 6379).start()
    settings = make_settings(
        redis_url=TEST_REDIS_URL.replace(parts.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}"))
    client = TestClient(GatewayServer(create_app(settings)))
    await client.start_server()
    try:
        await page.goto(url(client, f"/console#token={ADMIN_TOKEN}"))
        await page.wait_for(f"{card(sale_id, 'remaining')} === '6'")
        await proxy.cut()
        stale = await page.wait_for(
            "document.getElementById('connection').textContent.includes('stale')"
            " && document.getElementById('connection').textContent")
        assert "unavailable" in stale.lower() or "answer" in stale.lower(), stale
        assert await page.evaluate(card(sale_id, "remaining")) == "6"
        await page.screenshot("console-stale")
        await proxy.restore()
        assert await reserve_many(api, sale_id, 2) == [201, 201]
        await page.wait_for(f"{card(sale_id, 'remaining')} === '4'"
                            " && document.getElementById('connection').textContent === '● live'")
        # The 503s were the only failures: no script error, nothing outside the origin.
        page.errors[:] = [e for e in page.errors if "503" not in e]
        assert_stayed_home(page, client, secret=ADMIN_TOKEN)
    finally:
        await client.close()
        await proxy.close()


async def test_home_page_leads_to_the_console_and_the_docs(app_client, page) -> None:
    await page.goto(url(app_client, "/"))
    links = await page.evaluate("[...document.querySelectorAll('a')].map(a => a.pathname)")
    assert {"/console", "/docs", "/healthz", "/metrics"} <= set(links)
    await page.screenshot("home")
    await page.click("a[href='/console']")
    await page.wait_for("location.pathname === '/console'"
                        " && !document.getElementById('signin').hidden")
    assert_stayed_home(page, app_client)
