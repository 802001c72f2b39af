"""The Locust swarm: flash buyers, browsers and cart shoppers against a running gateway.

Run it through ``make swarm`` (benchmarks/swarm.py prepares the data and the stack), or
by hand: ``locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080`` with
FLASHSALE_SWARM_FILE naming the JSON file swarm.py writes (buyers with tokens, an address
and a wallet each, the sale, product ids and search terms).
"""

from __future__ import annotations

import itertools
import json
import os
import random

from locust import FastHttpUser, between, task

with open(os.environ.get("FLASHSALE_SWARM_FILE", "benchmarks/results/swarm/swarm.json")) as f:
    DATA = json.load(f)
_buyers = itertools.cycle(DATA["buyers"])


class Shopper(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        buyer = next(_buyers)
        self.buyer = buyer
        self.auth = {"Authorization": f"Bearer {buyer['token']}"}
        self.keys = itertools.count()

    def key(self, kind: str) -> str:
        return f"{kind}-{self.buyer['user_id']}-{id(self)}-{next(self.keys)}"

    def checkout(self, **extra) -> None:
        body = {"idempotency_key": self.key("order"),
                "shipping_address_id": self.buyer["address_id"],
                "payment_method_id": self.buyer["payment_method_id"], **extra}
        with self.client.post("/api/v1/orders", json=body, headers=self.auth,
                              name="/api/v1/orders", catch_response=True) as resp:
            if resp.status_code in (200, 201) or (
                    resp.status_code in (409, 422) and "error" in (resp.json() or {})):
                resp.success()  # sold-out stock or an expired hold are answers, not failures


class FlashBuyer(Shopper):
    """Hammers the sale: reserve one unit, pay for it, watch the sale."""
    weight = 6
    wait_time = between(0.05, 0.3)

    @task(5)
    def reserve_and_pay(self) -> None:
        sale = DATA["sale_id"]
        with self.client.post(f"/api/v1/sales/{sale}/reservations", headers=self.auth,
                              json={"quantity": 1, "idempotency_key": self.key("hold")},
                              name="/api/v1/sales/{id}/reservations",
                              catch_response=True) as resp:
            if resp.status_code in (409, 422):  # sold out, limit reached: the expected answers
                resp.success()
                return
        if resp.status_code == 201:
            self.checkout(reservation_id=resp.json()["reservation_id"])

    @task(2)
    def watch_sale(self) -> None:
        self.client.get(f"/api/v1/sales/{DATA['sale_id']}", name="/api/v1/sales/{id}")


class Browser(Shopper):
    """Reads the catalog: product pages, category listings, searches and suggestions."""
    weight = 3
    wait_time = between(0.1, 0.5)

    @task(5)
    def product_page(self) -> None:
        pid = random.choice(DATA["product_ids"])
        self.client.get(f"/api/v1/products/{pid}", name="/api/v1/products/{id}")

    @task(2)
    def browse(self) -> None:
        self.client.get("/api/v1/products", name="/api/v1/products", params={
            "category": random.choice(DATA["category_ids"]), "sort": "price_asc"})

    @task(3)
    def search(self) -> None:
        self.client.get("/api/v1/search", name="/api/v1/search",
                        params={"q": random.choice(DATA["terms"])})

    @task(1)
    def suggest(self) -> None:
        self.client.get("/api/v1/search/suggest", name="/api/v1/search/suggest",
                        params={"q": random.choice(DATA["terms"])[:3]})


class CartShopper(Shopper):
    """Fills a cart with regular stock and checks it out."""
    weight = 1
    wait_time = between(0.2, 1.0)

    @task
    def buy_a_cart(self) -> None:
        for pid in random.sample(DATA["product_ids"], 2):
            self.client.post("/api/v1/cart/items", headers=self.auth, name="/api/v1/cart/items",
                             json={"product_id": pid, "quantity": 1})
        self.client.get("/api/v1/cart", headers=self.auth)
        self.checkout()
