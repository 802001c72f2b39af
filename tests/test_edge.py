"""The edge around every route (gateway/middleware.py): paths and methods no route answers
get aiohttp's router's verdict (405 with Allow, else 404) in the contract's shape, counted
under route="unmatched"; the metric steps tallied between scrapes read exactly."""

from __future__ import annotations

import re
from urllib.parse import quote

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.routes import ROUTE_TABLES
from tests.conftest import assert_error

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Every declared API path with its methods; a GET page or probe also answers HEAD.
DECLARED: dict[str, set[str]] = {}
for _table in ROUTE_TABLES:
    for _route in _table.routes:
        DECLARED.setdefault(_route.path, set()).add(_route.method)
_TEMPLATES = sorted(DECLARED)


def _fill(template: str, value: str) -> str:
    return re.sub(r"\{[a-z_]+\}", value, template)


@hsettings(max_examples=60, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=st.sampled_from(_TEMPLATES), method=st.sampled_from(METHODS),
       value=st.from_regex(r"[1-9][0-9]{0,5}", fullmatch=True))
async def test_a_known_path_under_another_method_is_405_with_allow(
        api, template: str, method: str, value: str) -> None:
    path = _fill(template, value)
    # The methods of every template this concrete path fills (two templates can match
    # one path, e.g. /sales/{sale_id} and /sales/queue when the id is "queue").
    allowed = set().union(*(DECLARED[t] for t in _TEMPLATES
                            if re.fullmatch(re.sub(r"\{[a-z_]+\}", "[^/]+", t), path)))
    if method in allowed:
        return
    resp = await api.client.request(method, path)
    assert resp.status == 405, (method, path, resp.status)
    assert_error(await resp.json(), "method_not_allowed")
    assert set(resp.headers["Allow"].split(",")) == allowed, (path, resp.headers["Allow"])


@hsettings(max_examples=60, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                    max_size=40), method=st.sampled_from(METHODS))
async def test_an_unknown_path_is_404_in_the_contract(api, path: str, method: str) -> None:
    target = "/nowhere/" + quote(path, safe="")
    resp = await api.client.request(method, target)
    assert resp.status == 404, (method, target)
    assert_error(await resp.json(), "not_found")


def _sample(text: str, name: str, labels: str) -> float:
    found = re.search(re.escape(name) + r"\{" + labels + r"\} (\S+)", text)
    return float(found.group(1)) if found else 0.0


async def test_counts_read_exactly_at_every_scrape(api) -> None:
    """Requests, their duration buckets and the unmatched ones, as many as were sent."""
    before = await (await api.client.get("/metrics")).text()
    for i in range(1, 8):
        for _ in range(i):
            assert (await api.client.get("/healthz")).status == 200
        assert (await api.client.get(f"/nowhere/{i}")).status == 404
        text = await (await api.client.get("/metrics")).text()
        ok = 'method="GET",route="/healthz",status="200"'
        lost = 'method="GET",route="unmatched",status="404"'
        total = i * (i + 1) // 2
        assert (_sample(text, "flashsale_http_requests_total", ok)
                - _sample(before, "flashsale_http_requests_total", ok)) == total
        assert (_sample(text, "flashsale_http_requests_total", lost)
                - _sample(before, "flashsale_http_requests_total", lost)) == i
        count = 'route="/healthz"'
        assert (_sample(text, "flashsale_http_request_duration_seconds_count", count)
                - _sample(before, "flashsale_http_request_duration_seconds_count", count)
                ) == total
        inf = 'le="\\+Inf",route="/healthz"'
        assert (_sample(text, "flashsale_http_request_duration_seconds_bucket", inf)
                - _sample(before, "flashsale_http_request_duration_seconds_bucket", inf)
                ) == total
