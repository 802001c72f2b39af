"""Hypothesis, stateful, over the HTTP API with real Postgres and Redis: carts, checkouts
(card, wallet, cash on delivery, a declined card; with or without a coupon limited to 3
uses, 2 a buyer), replays of a checkout's idempotency key, cancellations by the owner
and by support, shipping, delivery, returns refunded or rejected and wallet credits, in
whatever order Hypothesis picks. After every step:

- each product's stock plus the units out in live orders (less those a refunded return
  brought back) is what it started with;
- each wallet holds exactly what the answers said: its credits, less the wallet orders
  placed, plus the refund each cancellation or accepted return reported;
- no payment was refunded beyond what was paid, and the provider's books (the simulated
  card's, the wallet ledger) agree with the payments';
- the coupon is redeemed within its limits, once per order that kept it (a cancelled
  order or a failed checkout gave it back);
- no answer was a 5xx."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from engine.settings import Settings
from gateway.app import create_app
from gateway.context import SERVICES
from tests.conftest import Api, GatewayServer, create_product
from tests.orders_support import shopper

STOCK = 20
START = Decimal("300.00")
USERS = st.integers(0, 1)
PRODUCTS = st.integers(0, 1)
METHODS = st.sampled_from(["card", "wallet", "cod", "declined"])
LIVE = ("placed", "paid", "shipped", "delivered", "returned")  # hold stock unless returned


class PurchaseMachine(RuleBasedStateMachine):
    orders = Bundle("orders")
    returns = Bundle("returns")
    settings: Settings  # set by the test before it runs

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.api: Api = self.run(self._start())
        self.users = [self.run(shopper(self.api, wallet=str(START))) for _ in range(2)]
        self.products = [self.run(create_product(self.api, stock=STOCK, price=price))
                         ["product_id"] for price in ("20.00", "35.50")]
        self.coupon = f"GEN{uuid.uuid4().hex[:10]}"  # 3 in all, 2 per buyer
        status, body = self.call("POST", "/api/v1/admin/coupons", headers=self.api.admin, json={
            "code": self.coupon, "amount_off": "3.00", "max_redemptions": 3,
            "per_user_limit": 2})
        assert status == 201, body
        self.coupon_id = body["coupon_id"]
        self.wallet = {u["user_id"]: START for u in self.users}  # what the answers said
        self.credits: dict[tuple[int, str], str] = {}  # (user, key) -> amount credited

    async def _start(self) -> Api:
        client = TestClient(GatewayServer(create_app(self.settings)))
        await client.start_server()
        return Api(client)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def call(self, method: str, path: str, **kwargs) -> tuple[int, object]:
        status, body = self.run(self.api.call(method, path, **kwargs))
        assert status < 500, (method, path, status, body)
        return status, body

    def teardown(self) -> None:
        self.run(self.api.client.close())
        self.loop.close()

    # -- rules -----------------------------------------------------------------------------
    @rule(user=USERS, product=PRODUCTS, quantity=st.integers(1, 3))
    def add_to_cart(self, user, product, quantity):
        status, _ = self.call("POST", "/api/v1/cart/items", headers=self.users[user]["headers"],
                              json={"product_id": self.products[product], "quantity": quantity})
        assert status in (201, 409, 422), status

    @rule(target=orders, user=USERS, product=PRODUCTS, quantity=st.integers(1, 3),
          method=METHODS, coupon=st.booleans())
    def buy(self, user, product, quantity, method, coupon):
        """Add to the cart and check out at once (so that orders are common)."""
        self.add_to_cart(user, product, quantity)
        return self.checkout(user, method, coupon)

    @rule(target=orders, user=USERS, method=METHODS, coupon=st.booleans())
    def checkout(self, user, method, coupon):
        buyer = self.users[user]
        body = {"idempotency_key": uuid.uuid4().hex, "shipping_address_id": buyer["address_id"],
                "payment_method_id": buyer["pm"][method]}
        if coupon:
            body["coupon_code"] = self.coupon
        status, order = self.call("POST", "/api/v1/orders", headers=buyer["headers"],
                                  json=body)
        if status != 201:
            assert status in (409, 422), (status, order)
            return multiple()
        assert method != "declined", order
        if method == "wallet":
            self.wallet[buyer["user_id"]] -= Decimal(order["total"])
        return {"id": order["order_id"], "user": user, "method": method, "body": body,
                "total": Decimal(order["total"]), "items": order["items"]}

    @rule(order=orders)
    def replay_checkout(self, order):
        """The same key and body again: the same order, charged once."""
        status, again = self.call("POST", "/api/v1/orders", json=order["body"],
                                  headers=self.users[order["user"]]["headers"])
        assert status == 200 and again["order_id"] == order["id"], (status, again)

    @rule(order=orders, by_support=st.booleans())
    def cancel(self, order, by_support):
        path = (f"/api/v1/admin/orders/{order['id']}/cancel" if by_support
                else f"/api/v1/orders/{order['id']}/cancel")
        headers = self.api.admin if by_support else self.users[order["user"]]["headers"]
        status, body = self.call("POST", path, headers=headers)
        if status == 200 and order["method"] == "wallet":
            self.wallet[self.users[order["user"]]["user_id"]] += order["total"]
        assert status in (200, 409), (status, body)

    @rule(order=orders, skip=st.booleans())
    def advance(self, order, skip):
        """Support moves the order on (shipped, then delivered); ``skip``: straight to
        delivered, which must be refused unless it shipped already."""
        _, now = self.call("GET", f"/api/v1/orders/{order['id']}",
                           headers=self.users[order["user"]]["headers"])
        target = "delivered" if skip or now["status"] == "shipped" else "shipped"
        status, body = self.call("POST", f"/api/v1/admin/orders/{order['id']}/transition",
                                 headers=self.api.admin, json={"status": target})
        assert status in (200, 409), (status, body)

    @rule(target=returns, order=orders, line=st.integers(0, 1), quantity=st.integers(1, 3))
    def deliver_and_return(self, order, line, quantity):
        """Support ships and delivers the order, and its buyer sends some back (so that
        returns are common)."""
        for target in ("shipped", "delivered"):
            status, body = self.call("POST", f"/api/v1/admin/orders/{order['id']}/transition",
                                     headers=self.api.admin, json={"status": target})
            assert status in (200, 409), (status, body)
        return self.request_return(order, line, quantity)

    @rule(target=returns, order=orders, line=st.integers(0, 1), quantity=st.integers(1, 3))
    def request_return(self, order, line, quantity):
        item = order["items"][line % len(order["items"])]
        status, ret = self.call(
            "POST", f"/api/v1/orders/{order['id']}/returns",
            headers=self.users[order["user"]]["headers"],
            json={"items": [{"order_item_id": item["order_item_id"], "quantity": quantity}],
                  "reason": "generated"})
        if status != 201:
            assert status in (409, 422), (status, ret)
            return multiple()
        return {"id": ret["return_id"], "order": order}

    @rule(ret=returns, accept=st.booleans())
    def decide_return(self, ret, accept):
        status, body = self.call("POST", f"/api/v1/admin/returns/{ret['id']}/decision",
                                 headers=self.api.admin,
                                 json={"status": "refunded" if accept else "rejected"})
        assert status in (200, 409), (status, body)
        order = ret["order"]
        if status == 200 and accept and order["method"] == "wallet":
            self.wallet[self.users[order["user"]]["user_id"]] += Decimal(body["refund_amount"])

    @rule(user=USERS, amount=st.sampled_from(["0.01", "5.00", "99.99"]),
          key=st.sampled_from([None, None, "a", "b"]))
    def credit(self, user, amount, key):
        """A keyed credit is made once per user and key; the key again with another
        amount is refused."""
        uid = self.users[user]["user_id"]
        status, body = self.call("POST", f"/api/v1/admin/wallets/{uid}/credit",
                                 headers=self.api.admin,
                                 json={"amount": amount, "idempotency_key": key})
        made = self.credits.get((uid, key)) if key else None
        if made is not None and made != amount:
            assert status == 422 and body["error"]["code"] == "idempotency_key_reused", body
            return
        assert status == 200, body
        if made is None:
            self.wallet[uid] += Decimal(amount)
            if key:
                self.credits[(uid, key)] = amount
        assert Decimal(body["balance"]) == self.wallet[uid]

    # -- invariants ------------------------------------------------------------------------
    def fetch(self, query: str, *args):
        return self.run(self.api.client.app[SERVICES].pool.fetch(query, *args))

    @invariant()
    def stock_is_conserved(self):
        available = {r["product_id"]: r["available_qty"] for r in self.fetch(
            "SELECT product_id, available_qty FROM inventory WHERE product_id = ANY($1)",
            self.products)}
        out: Counter = Counter()
        for r in self.fetch(
                "SELECT i.product_id, i.quantity - coalesce((SELECT sum(ri.quantity)"
                " FROM return_items ri JOIN returns rt USING (return_id)"
                " WHERE ri.order_item_id = i.order_item_id AND rt.status = 'refunded'), 0)"
                " AS held FROM order_items i JOIN orders o USING (order_id)"
                " WHERE i.product_id = ANY($1) AND o.status = ANY($2)",
                self.products, list(LIVE)):
            out[r["product_id"]] += r["held"]
        for product in self.products:
            assert available[product] >= 0
            assert available[product] + out[product] == STOCK, (product, available, out)

    @invariant()
    def coupon_redemptions_are_counted_once_and_given_back(self):
        """Within its limits, counted once per checkout that kept it; a cancelled order or
        a failed checkout gave it back."""
        [coupon] = self.fetch("SELECT coupon_id, redeemed FROM coupons WHERE coupon_id = $1",
                              self.coupon_id)
        kept = self.fetch(
            "SELECT r.user_id, o.status FROM coupon_redemptions r"
            " LEFT JOIN orders o USING (order_id)"
            " WHERE r.coupon_id = $1 AND r.status = 'redeemed'", coupon["coupon_id"])
        assert coupon["redeemed"] == len(kept) <= 3, (dict(coupon), kept)
        assert all(r["status"] not in (None, "cancelled") for r in kept), kept
        uses = {r["user_id"]: r["uses"] for r in self.fetch(
            "SELECT user_id, uses FROM coupon_usage WHERE coupon_id = $1", coupon["coupon_id"])}
        per_user = Counter(r["user_id"] for r in kept)
        assert {u: n for u, n in uses.items() if n} == dict(per_user), (uses, per_user)
        assert max(per_user.values(), default=0) <= 2

    @invariant()
    def wallets_hold_what_the_answers_said(self):
        for r in self.fetch("SELECT user_id, wallet_balance FROM users WHERE user_id = ANY($1)",
                            list(self.wallet)):
            assert r["wallet_balance"] == self.wallet[r["user_id"]], (dict(r), self.wallet)
            assert r["wallet_balance"] >= 0

    @invariant()
    def refunds_agree_and_never_exceed_what_was_paid(self):
        users = list(self.wallet)
        for r in self.fetch(
                "SELECT p.payment_id, p.method, p.amount, p.refunded_amount,"
                " (SELECT coalesce(sum(amount), 0) FROM payment_refunds f"
                "  WHERE f.payment_id = p.payment_id) AS refunds,"
                " c.refunded_amount AS card_refunded FROM payments p"
                " LEFT JOIN sim_card_charges c ON c.reference = 'pay_' || p.payment_id"
                " WHERE p.user_id = ANY($1)", users):
            assert r["refunds"] == r["refunded_amount"] <= r["amount"], dict(r)
            if r["method"] == "card" and r["card_refunded"] is not None:
                assert r["card_refunded"] == r["refunded_amount"], dict(r)
        # Every movement of a wallet is in its ledger (credits, payments, voids, refunds).
        for r in self.fetch(
                "SELECT u.user_id, u.wallet_balance, (SELECT balance_after FROM wallet_ledger l"
                " WHERE l.user_id = u.user_id ORDER BY entry_id DESC LIMIT 1) AS last,"
                " (SELECT sum(amount) FROM wallet_ledger l WHERE l.user_id = u.user_id) AS sum"
                " FROM users u WHERE u.user_id = ANY($1)", users):
            assert r["last"] == r["sum"] == r["wallet_balance"], dict(r)


def test_purchase_path_invariants(settings: Settings) -> None:
    """Sync on purpose: the machine runs its own event loop (a fresh gateway per example)."""
    PurchaseMachine.settings = settings
    run_state_machine_as_test(PurchaseMachine, settings=hsettings(
        max_examples=25, stateful_step_count=50, deadline=None,
        suppress_health_check=list(HealthCheck)))
