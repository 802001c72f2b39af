"""Browse, search with facets and suggest: exact answers against a catalog the test loads,
computed independently in Python (tests/test_catalog_data.py)."""

from __future__ import annotations

import re
import urllib.parse
from decimal import Decimal

import pytest

from catalog.query import TEXT_CONFIG
from tests.conftest import assert_error
from tests.test_catalog_data import (
    expected_facets,
    facets_as_lists,
    load_catalog,
    normalize_reference,
    passes,
    sort_key,
)


@pytest.fixture
async def catalog(pool):
    return await load_catalog(pool)


def url(path: str, params: list[tuple[str, object]]) -> str:
    return path + "?" + urllib.parse.urlencode([(k, str(v)) for k, v in params])


def ids(body: dict) -> list[int]:
    return [item["product_id"] for item in body["items"]]


def expected(catalog, f: dict, sort: str, words: set[str] | None = None) -> list[int]:
    found = [i for i in catalog.items if passes(i, f) and (words is None or words <= i.words())]
    return [i.product_id for i in sorted(found, key=sort_key(sort))]


BROWSE_CASES = [
    ([], {}),
    ([("brand", "Dell")], {"brands": {"Dell"}}),
    ([("brand", "Dell"), ("brand", "Apple")], {"brands": {"Dell", "Apple"}}),
    ([("price_min", "25"), ("price_max", "100")],
     {"price_min": Decimal(25), "price_max": Decimal(100)}),
    ([("rating_min", "3.5")], {"rating_min": Decimal("3.5")}),
    ([("brand", "HP"), ("price_max", "1000.00"), ("rating_min", "1")],
     {"brands": {"HP"}, "price_max": Decimal(1000), "rating_min": Decimal(1)}),
]


@pytest.mark.parametrize("sort", ["newest", "price_asc", "price_desc", "rating"])
async def test_browse_filters_and_sorts_give_exact_ids(api, catalog, sort) -> None:
    electronics = catalog.categories["Electronics"]
    cases = [*BROWSE_CASES,
             ([("category", catalog.categories["Laptops"])],
              {"categories": {catalog.categories["Laptops"]}}),
             # a parent category includes its descendants
             ([("category", electronics), ("price_min", "100")],
              {"categories": catalog.subtree(electronics), "price_min": Decimal(100)})]
    for params, f in cases:
        want = expected(catalog, f, sort)
        status, body = await api.call(
            "GET", url("/api/v1/products", [*params, ("sort", sort), ("page_size", 100)]))
        assert status == 200, body
        assert ids(body) == want[:100], params
        assert body["total"] == len(want), params


async def test_browse_pages_and_cursor_walk_the_same_order(api, catalog) -> None:
    f = {"categories": catalog.subtree(catalog.categories["Electronics"])}
    want = expected(catalog, f, "price_asc")
    assert len(want) > 40
    base = [("category", catalog.categories["Electronics"]), ("sort", "price_asc"),
            ("page_size", 7)]
    by_page = []
    for page in range(1, len(want) // 7 + 2):
        _, body = await api.call("GET", url("/api/v1/products", [*base, ("page", page)]),
                                 expect=200)
        assert body["page"] == page and body["page_size"] == 7
        assert body["total"] == len(want)
        by_page += ids(body)
    assert by_page == want
    by_cursor, cursor, pages = [], None, 0
    while True:
        params = base + ([("cursor", cursor)] if cursor else [])
        _, body = await api.call("GET", url("/api/v1/products", params), expect=200)
        by_cursor += ids(body)
        pages += 1
        assert body["page"] == pages and body["total"] == len(want)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert by_cursor == want
    assert pages == -(-len(want) // 7)


async def test_browse_item_shape_and_hidden_statuses(api, catalog) -> None:
    _, body = await api.call("GET", "/api/v1/products?page_size=100&page=1", expect=200)
    item = body["items"][0]
    assert set(item) >= {"product_id", "seller_id", "name", "description", "brand",
                         "category_id", "price", "currency", "rating_avg", "rating_count",
                         "available_qty", "status"}
    assert isinstance(item["price"], str) and "." in item["price"]
    archived = {i.product_id for i in catalog.items if i.status == "archived"}
    assert archived and not archived & set(ids(body))
    # the product page still answers for an archived product, with its status
    some = next(iter(archived))
    _, page = await api.call("GET", f"/api/v1/products/{some}", expect=200)
    assert page["status"] == "archived"


@pytest.mark.parametrize("query", [
    "page_size=101", "page_size=0", "page=0", "sort=cheapest", "price_min=-1",
    "price_min=1.234", "price_min=abc", "price_min=NaN", "rating_min=6", "page=501&page_size=20",
    "price_min=10&price_max=5", "cursor=not-a-cursor", "category=abc", "category=-3",
    "brand=" + "x" * 101])
async def test_browse_rejects_bad_parameters_with_422(api, catalog, query) -> None:
    status, body = await api.call("GET", "/api/v1/products?" + query)
    assert status == 422, (query, body)
    assert_error(body, "validation_failed")


async def test_cursor_belongs_to_its_sort_and_filters(api, catalog) -> None:
    _, body = await api.call("GET", "/api/v1/products?sort=price_asc&page_size=5", expect=200)
    cursor = body["next_cursor"]
    for other in ("sort=price_desc", "sort=price_asc&brand=Dell"):
        status, err = await api.call("GET", f"/api/v1/products?{other}&cursor={cursor}")
        assert status == 422
        assert_error(err, "validation_failed")


async def test_unknown_category_is_an_empty_result(api, catalog) -> None:
    _, body = await api.call("GET", "/api/v1/products?category=999999", expect=200)
    assert body["items"] == [] and body["total"] == 0
    _, body = await api.call("GET", "/api/v1/search?q=laptop&category=999999", expect=200)
    assert body["total"] == 0 and body["facets"]["brand"] == []


SEARCH_CASES = [
    ("laptop", [], {}),
    ("laptop", [("brand", "Dell")], {"brands": {"Dell"}}),
    ("laptop", [("brand", "Dell"), ("brand", "HP"), ("price_min", "50"),
                ("price_max", "1000")],
     {"brands": {"Dell", "HP"}, "price_min": Decimal(50), "price_max": Decimal(1000)}),
    ("black", [("rating_min", "3")], {"rating_min": Decimal(3)}),
    ("phone", [("price_max", "999.99"), ("rating_min", "2")],
     {"price_max": Decimal("999.99"), "rating_min": Decimal(2)}),
    ("silver kettle", [], {}),
]


async def test_search_facets_are_disjunctive_and_exact(api, catalog) -> None:
    cases = [*SEARCH_CASES,
             ("black", [("category", catalog.categories["Electronics"]), ("brand", "Apple")],
              {"categories": catalog.subtree(catalog.categories["Electronics"]),
               "brands": {"Apple"}})]
    for q, params, f in cases:
        words = set(q.split())
        matches = [i for i in catalog.items if words <= i.words()]
        want = expected(catalog, f, "price_asc", words)
        _, body = await api.call("GET", url("/api/v1/search", [
            ("q", q), *params, ("sort", "price_asc"), ("page_size", 100)]), expect=200)
        assert body["total"] == len(want), (q, params)
        assert ids(body) == want, (q, params)
        ref = normalize_reference(expected_facets(matches, f))
        assert facets_as_lists(body["facets"]) == ref, (q, params)


async def test_search_sorts_and_paging(api, catalog) -> None:
    words = {"laptop"}
    for sort in ("price_desc", "rating", "newest"):
        want = expected(catalog, {}, sort, words)
        got = []
        for page in (1, 2, 3, 4):
            _, body = await api.call("GET", url("/api/v1/search", [
                ("q", "Laptop"), ("sort", sort), ("page", page), ("page_size", 15)]),
                expect=200)
            assert body["page"] == page and body["total"] == len(want)
            got += ids(body)
        assert got == want, sort


async def test_relevance_puts_name_matches_above_description_matches(api, catalog) -> None:
    _, body = await api.call("GET", "/api/v1/search?q=kettle&page_size=100", expect=200)
    in_name = {i.product_id for i in catalog.items if "kettle" in i.name.lower()}
    in_text_only = {i.product_id for i in catalog.items
                    if "kettle" in i.words() and i.product_id not in in_name}
    order = ids(body)
    assert in_text_only and set(order) == {i for i in in_name | in_text_only
                                           if passes(catalog_item(catalog, i), {})}
    last_name_hit = max(order.index(i) for i in order if i in in_name)
    first_text_hit = min(order.index(i) for i in order if i in in_text_only)
    assert last_name_hit < first_text_hit


def catalog_item(catalog, product_id: int):
    return next(i for i in catalog.items if i.product_id == product_id)


HOSTILE = ['"', "'", "\\", "\\\\'", "&|!:*()", "laptop & | ! : * ( )", "<->", "a:*", "!!!",
           "'; DROP TABLE products; --", '"unterminated phrase', "laptop -", "-", "or",
           "the", "   ", "ñandú 中文 🚀 لابتوب", "\u200b", "%", "_", "laptop:*A", "x" * 200,
           "(((((((((((", "laptop" + "&" * 150]


async def test_hostile_queries_never_fail(api, catalog) -> None:
    for q in HOSTILE:
        for path in ("/api/v1/search", "/api/v1/search/suggest"):
            status, body = await api.call("GET", url(path, [("q", q)]))
            assert status in (200, 422), (path, q, status, body)
            if status == 422:
                assert_error(body, "validation_failed")
            elif path == "/api/v1/search":
                assert set(body) >= {"items", "total", "page", "facets"}
    # NUL, invalid UTF-8 and a 10 KB string are refused, not crashed on
    for raw in ("q=%00", "q=lap%00top", "q=%FF%FE", "q=%ED%A0%80", "q=" + "x" * 10_000,
                "q=laptop&brand=%00"):
        for path in ("/api/v1/search", "/api/v1/search/suggest"):
            resp = await api.client.get(f"{path}?{raw}")
            assert resp.status in (200, 422), (path, raw[:40], resp.status)
            if resp.status == 422:
                assert_error(await resp.json(), "validation_failed")


async def test_empty_search_is_422(api, catalog) -> None:
    for query in ("", "q=", "q=%20%20"):
        status, body = await api.call("GET", "/api/v1/search?" + query)
        assert status == 422, query
        assert_error(body, "validation_failed")


async def test_no_match_offers_did_you_mean(api, catalog) -> None:
    _, body = await api.call("GET", "/api/v1/search?q=laptpo", expect=200)
    assert body["total"] == 0 and body["items"] == []
    assert body["did_you_mean"] == "laptop"
    _, body = await api.call("GET", "/api/v1/search?q=laptop", expect=200)
    assert body["total"] > 0 and body["did_you_mean"] is None


async def test_search_parses_queries_with_the_configuration_products_are_indexed_with(
        pool) -> None:
    """TEXT_CONFIG and the search_vector column's expression must name one configuration,
    or stemmed words stop matching (a migration that changes one must change the other)."""
    expression = await pool.fetchval(
        "SELECT generation_expression FROM information_schema.columns"
        " WHERE table_name = 'products' AND column_name = 'search_vector'")
    assert set(re.findall(r"to_tsvector\('(\w+)'", expression)) == {TEXT_CONFIG}
