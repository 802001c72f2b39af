"""Product page and its cache, seller scoping, autocomplete upkeep, result invalidation."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp.test_utils import TestClient

from catalog.suggest import product_terms
from gateway.app import create_app
from gateway.context import SERVICES
from tests.conftest import Api, GatewayServer, assert_error

CONTRACT = {"product_id", "seller_id", "name", "description", "brand", "category_id", "price",
            "currency", "rating_avg", "rating_count", "available_qty", "status"}


async def seller(api: Api) -> dict:
    email = f"s-{id(api)}-{asyncio.get_running_loop().time()}@example.com"
    _, body = await api.call("POST", "/api/v1/auth/seller-signup", expect=201, json={
        "email": email, "password": "correct-horse-1", "name": "Shop"})
    return {**body, "email": email, "headers": {"Authorization": f"Bearer {body['token']}"}}


async def new_product(api: Api, who: dict, **fields) -> dict:
    body = {"name": "Dell Inspiron Laptop", "brand": "Dell", "price": "999.99",
            "description": "A laptop.", "available_qty": 5, **fields}
    _, product = await api.call("POST", "/api/v1/seller/products", json=body,
                                headers=who["headers"], expect=201)
    return product


async def test_seller_signup_gives_a_seller(api) -> None:
    shop = await seller(api)
    _, me = await api.call("GET", "/api/v1/me", headers=shop["headers"], expect=200)
    assert me["role"] == "seller"
    status, body = await api.call("POST", "/api/v1/auth/seller-signup", json={
        "email": shop["email"], "password": "correct-horse-1", "name": "Again"})
    assert status == 409
    assert_error(body, "conflict")


async def test_product_page_follows_writes_at_once(api) -> None:
    shop = await seller(api)
    product = await new_product(api, shop)
    pid = product["product_id"]
    _, page = await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    assert CONTRACT <= set(page) and page["available_qty"] == 5 and page["price"] == "999.99"
    assert page["seller_id"] == shop["user_id"]
    await api.call("PUT", f"/api/v1/seller/products/{pid}/inventory", json={"available_qty": 2},
                   headers=shop["headers"], expect=200)
    await api.call("PATCH", f"/api/v1/seller/products/{pid}", json={"price": "899.00"},
                   headers=shop["headers"], expect=200)
    _, page = await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    assert (page["available_qty"], page["price"]) == (2, "899.00")


async def test_stock_changed_elsewhere_shows_within_the_ttl(api, pool) -> None:
    cache = api.client.app[SERVICES].catalog_cache
    cache.product_ttl = 0.3
    shop = await seller(api)
    pid = (await new_product(api, shop))["product_id"]
    await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    misses = cache.misses
    # checkout decrements stock without telling the catalog
    await pool.execute("UPDATE inventory SET available_qty = 4 WHERE product_id = $1", pid)
    _, page = await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    assert page["available_qty"] == 5 and cache.misses == misses  # served from the cache
    await asyncio.sleep(0.35)
    _, page = await api.call("GET", f"/api/v1/products/{pid}", expect=200)
    assert page["available_qty"] == 4


async def test_concurrent_misses_share_one_load(api) -> None:
    shop = await seller(api)
    pid = (await new_product(api, shop))["product_id"]
    products = api.client.app[SERVICES].products
    # 30 requests must land within one cache lifetime even on a loaded machine
    api.client.app[SERVICES].catalog_cache.product_ttl = 60
    loads = 0
    original = products.load

    async def counted(product_id: int):
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return await original(product_id)

    products.load = counted
    results = await asyncio.gather(*(api.call("GET", f"/api/v1/products/{pid}")
                                     for _ in range(30)))
    assert {status for status, _ in results} == {200} and loads == 1
    status, body = await api.call("GET", "/api/v1/products/987654321")
    assert status == 404
    assert_error(body, "not_found")


async def test_invalidation_reaches_other_workers(api, settings, database) -> None:
    other = TestClient(GatewayServer(create_app(settings)))
    await other.start_server()
    try:
        other_cache = other.app[SERVICES].catalog_cache
        other_cache.product_ttl = 60  # only the broadcast can refresh it in time
        shop = await seller(api)
        pid = (await new_product(api, shop))["product_id"]
        await asyncio.sleep(0.1)  # let the other worker's listener subscribe
        first = await (await other.get(f"/api/v1/products/{pid}")).json()
        assert first["available_qty"] == 5
        await api.call("PUT", f"/api/v1/seller/products/{pid}/inventory",
                       json={"available_qty": 1}, headers=shop["headers"], expect=200)
        for _ in range(50):
            seen = await (await other.get(f"/api/v1/products/{pid}")).json()
            if seen["available_qty"] == 1:
                break
            await asyncio.sleep(0.02)
        assert seen["available_qty"] == 1
    finally:
        await other.close()


async def test_sellers_touch_only_their_products(api) -> None:
    alice, bob = await seller(api), await seller(api)
    pid = (await new_product(api, alice))["product_id"]
    for method, path, body in (
            ("PATCH", f"/api/v1/seller/products/{pid}", {"price": "1.00"}),
            ("PUT", f"/api/v1/seller/products/{pid}/inventory", {"available_qty": 0})):
        status, err = await api.call(method, path, json=body, headers=bob["headers"])
        assert status == 404
        assert_error(err, "not_found")
        customer = await api.signup()
        status, err = await api.call(method, path, json=body, headers=customer["headers"])
        assert status == 403
        assert_error(err, "forbidden")
        await api.call(method, path, json=body, headers=api.admin, expect=200)
    _, mine = await api.call("GET", "/api/v1/seller/products", headers=bob["headers"],
                             expect=200)
    assert mine["total"] == 0 and mine["items"] == []
    _, mine = await api.call("GET", "/api/v1/seller/products", headers=alice["headers"],
                             expect=200)
    assert [p["product_id"] for p in mine["items"]] == [pid]
    status, err = await api.call("POST", "/api/v1/seller/products", headers=bob["headers"],
                                 json={"name": "X", "price": "1.00",
                                       "seller_id": alice["user_id"]})
    assert status == 403


async def test_product_bodies_are_validated(api) -> None:
    shop = await seller(api)
    for body in ({"name": "X", "price": "1.001"}, {"name": "X", "price": "-1"},
                 {"name": "", "price": "1.00"}, {"name": "X", "price": "1", "status": "x"},
                 {"name": "X", "price": "1", "rating_avg": "5.00"},
                 {"name": "X\u0000", "price": "1"}, {"name": "X", "price": "1",
                                                     "category_id": 999999}):
        status, err = await api.call("POST", "/api/v1/seller/products", json=body,
                                     headers=shop["headers"])
        assert status == 422, body
        assert_error(err, "validation_failed")


async def test_suggest_counts_follow_product_writes(api) -> None:
    shop = await seller(api)
    names = ["Lenovo Laptop Black", "Dell Laptop Silver", "Dell Lamp", "Acme Lantern",
             "Acme Laptop Stand"]
    made = [await new_product(api, shop, name=n, brand=n.split()[0]) for n in names]
    counts = Counter(t for n in names for t in product_terms(n, n.split()[0]))
    want = sorted((t for t in counts if t.startswith("la")), key=lambda t: (-counts[t], t))
    _, body = await api.call("GET", "/api/v1/search/suggest?q=La", expect=200)
    assert body["suggestions"] == want
    _, body = await api.call("GET", "/api/v1/search/suggest?q=dell%20lap", expect=200)
    assert body["suggestions"] == ["dell laptop"]
    # archiving and renaming move the counts in the same transaction
    await api.call("PATCH", f"/api/v1/seller/products/{made[3]['product_id']}",
                   json={"status": "archived"}, headers=shop["headers"], expect=200)
    await api.call("PATCH", f"/api/v1/seller/products/{made[2]['product_id']}",
                   json={"name": "Dell Lampshade"}, headers=shop["headers"], expect=200)
    _, body = await api.call("GET", "/api/v1/search/suggest?q=la", expect=200)
    assert body["suggestions"] == ["laptop", "lampshade"]
    _, body = await api.call("GET", "/api/v1/search/suggest?q=laptpo", expect=200)
    assert body["suggestions"][0] == "laptop"  # a typo falls back to similarity
    _, body = await api.call("GET", "/api/v1/search/suggest?q=", expect=200)
    assert body == {"suggestions": []}


async def test_search_results_follow_seller_writes(api) -> None:
    shop = await seller(api)
    await new_product(api, shop, name="Acme Kettle One", brand="Acme")
    _, body = await api.call("GET", "/api/v1/search?q=kettle", expect=200)
    assert body["total"] == 1
    _, again = await api.call("GET", "/api/v1/search?q=kettle", expect=200)
    assert again == body  # the cached result
    made = await new_product(api, shop, name="Zeta Kettle Two", brand="Zeta")
    _, body = await api.call("GET", "/api/v1/search?q=kettle", expect=200)
    assert body["total"] == 2
    assert [b["value"] for b in body["facets"]["brand"]] == ["Acme", "Zeta"]
    await api.call("PATCH", f"/api/v1/seller/products/{made['product_id']}",
                   json={"status": "inactive"}, headers=shop["headers"], expect=200)
    _, body = await api.call("GET", "/api/v1/search?q=kettle", expect=200)
    assert body["total"] == 1
    _, body = await api.call("GET", "/api/v1/products?brand=Zeta", expect=200)
    assert body["total"] == 0


async def test_category_tree_and_admin_only_creation(api) -> None:
    _, root = await api.call("POST", "/api/v1/admin/categories", json={"name": "Garden"},
                             headers=api.admin, expect=201)
    _, leaf = await api.call("POST", "/api/v1/admin/categories", headers=api.admin, expect=201,
                             json={"name": "Tools", "parent_id": root["category_id"]})
    status, err = await api.call("POST", "/api/v1/admin/categories", headers=api.admin,
                                 json={"name": "tools", "parent_id": root["category_id"]})
    assert status == 409
    customer = await api.signup()
    status, _ = await api.call("POST", "/api/v1/admin/categories", json={"name": "X"},
                               headers=customer["headers"])
    assert status == 403
    _, tree = await api.call("GET", "/api/v1/categories", expect=200)
    assert tree == [{"category_id": root["category_id"], "name": "Garden", "parent_id": None,
                     "children": [{"category_id": leaf["category_id"], "name": "Tools",
                                   "parent_id": root["category_id"], "children": []}]}]
    # a product in the new leaf is found through its parent at once
    shop = await seller(api)
    made = await new_product(api, shop, name="Acme Rake", category_id=leaf["category_id"])
    _, body = await api.call("GET", f"/api/v1/products?category={root['category_id']}",
                             expect=200)
    assert [p["product_id"] for p in body["items"]] == [made["product_id"]]
