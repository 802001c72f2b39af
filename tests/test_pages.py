"""The browser pages over plain HTTP: `/`, `/console`, `/docs` and their assets are served
by the gateway itself, from this origin only, and a wrong asset name is a 404 in the error
contract (never a file outside the table). The pages in a real browser:
tests/test_console_browser.py."""

from __future__ import annotations

import gzip
import re
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import assert_error

PAGES = ("/", "/console", "/docs")


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.assets.append(values["src"])
        elif tag == "link" and values.get("href"):
            self.assets.append(values["href"])
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"])


async def page_links(api, path: str) -> Links:
    resp = await api.client.get(path)
    assert resp.status == 200, path
    assert resp.content_type == "text/html"
    parser = Links()
    parser.feed(await resp.text())
    return parser


@pytest.mark.parametrize("path", PAGES)
async def test_pages_load_only_this_origins_files(api, path: str) -> None:
    resp = await api.client.get(path)
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self';" in csp  # no inline or remote script
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    links = await page_links(api, path)
    assert links.assets, path
    for asset in links.assets:
        if asset.startswith("data:"):
            continue
        assert asset.startswith("/") and not asset.startswith("//"), asset
        got = await api.client.get(asset)
        assert got.status == 200, asset
        body = await got.read()
        assert body, asset
        expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        assert got.content_type == expected[asset[asset.rfind("."):]], asset


async def test_home_page_links_answer(api) -> None:
    links = await page_links(api, "/")
    assert {"/console", "/docs", "/healthz", "/readyz", "/metrics",
            "/api/v1/openapi.json"} <= set(links.links)
    for link in links.links:
        if link == "/readyz":
            continue  # the readiness probe is tested where outages are staged
        resp = await api.client.get(link)
        assert resp.status == 200, link


async def test_docs_reads_the_served_openapi_document(api) -> None:
    script = await (await api.client.get("/static/docs.js")).text()
    assert 'url: "/api/v1/openapi.json"' in script
    assert "validatorUrl: null" in script  # the public validator badge would call out
    _, doc = await api.call("GET", "/api/v1/openapi.json", expect=200)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_console_keeps_the_token_out_of_urls(api) -> None:
    """The console sends the token only as a header; the fragment is dropped at once."""
    script = await (await api.client.get("/static/console.js")).text()
    assert 'Authorization: "Bearer " + state.token' in script
    assert "history.replaceState(null, \"\", location.pathname)" in script
    assert not re.search(r"[?&]token=", script)
    assert ".innerHTML" not in script  # seller-supplied names are never parsed as HTML


@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\x00"),
                    min_size=1, max_size=40))
async def test_unknown_asset_names_are_404_in_the_contract(api, name: str) -> None:
    known = {"console.js", "console.css", "console.html", "docs.js", "docs.css", "index.html",
             "swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}
    if name in known or name in {".", ".."}:
        return
    for prefix in ("/static/", "/docs/assets/"):
        resp = await api.client.get(prefix + _quote(name))
        assert resp.status == 404, (prefix, name)
        assert_error(await resp.json(), "not_found")


async def test_asset_paths_cannot_leave_the_table(api) -> None:
    for path in ("/static/..%2Fapp.py", "/static/%2e%2e%2fpages.py",
                 "/docs/assets/..%2F..%2Fcore.py", "/static/../gateway/app.py",
                 "/docs/assets/swagger-editor.js"):
        resp = await api.client.get(path)
        assert resp.status == 404, path
        assert_error(await resp.json(), "not_found")


def _quote(name: str) -> str:
    from urllib.parse import quote
    return quote(name, safe="")


@pytest.mark.parametrize("path", ["/console", "/static/console.js",
                                  "/docs/assets/swagger-ui-bundle.js"])
async def test_files_are_revalidated_and_sent_packed(api, path: str) -> None:
    """A reopened page costs a 304 until the file changes; text goes gzipped to a browser
    that takes it, and as it is to one that does not."""
    plain = await api.client.get(path, headers={"Accept-Encoding": "identity"})
    body = await plain.read()
    assert plain.status == 200 and "Content-Encoding" not in plain.headers
    assert plain.headers["Cache-Control"] == "no-cache"
    etag = plain.headers["ETag"]
    again = await api.client.get(path, headers={"If-None-Match": f'"other", {etag}'})
    assert again.status == 304 and await again.read() == b""
    packed = await api.client.get(path, headers={"Accept-Encoding": "gzip, deflate"},
                                  auto_decompress=False)
    assert packed.headers["Content-Encoding"] == "gzip"
    raw = await packed.read()
    assert len(raw) < len(body) and gzip.decompress(raw) == body
    refused = await api.client.get(path, headers={"Accept-Encoding": "gzip;q=0, br"},
                                   auto_decompress=False)
    assert "Content-Encoding" not in refused.headers and await refused.read() == body
