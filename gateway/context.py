"""Typed application state: the service objects built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from accounts.cards import simulated_outcome
from accounts.passwords import Hasher
from accounts.service import Accounts
from accounts.standing import Standings
from accounts.throttle import Throttle
from accounts.tokens import TokenSigner
from catalog.also_bought import AlsoBoughtService
from catalog.cache import CatalogCache
from catalog.listing import Browse
from catalog.products import Categories, Products
from catalog.reviews import Reviews
from catalog.search import Search
from catalog.sellers import Sellers
from catalog.suggest import Suggestions
from catalog.wishlist import Wishlists
from engine.admission import Admission
from engine.sales import Sales
from engine.settings import Settings
from engine.waiting_room import WaitingRoom
from orders.cart import Carts
from orders.checkout import Checkout
from orders.coupons import Coupons
from orders.orders import Orders
from orders.payments import Payments
from orders.pricing import PricingRules
from orders.providers import CashOnDelivery, SimulatedCardProvider, WalletProvider
from orders.returns import Returns
from orders.tasks import OrderTasks
from orders.upkeep import Upkeep


@dataclass(slots=True)
class Services:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    signer: TokenSigner
    standings: Standings
    accounts: Accounts
    admission: Admission
    sales: Sales
    room: WaitingRoom
    products: Products
    categories: Categories
    catalog_cache: CatalogCache
    browse: Browse
    search: Search
    suggestions: Suggestions
    reviews: Reviews
    sellers: Sellers
    carts: Carts
    payments: Payments
    checkout: Checkout
    orders: Orders
    coupons: Coupons
    returns: Returns
    orders_upkeep: Upkeep
    wishlists: Wishlists
    also_bought: AlsoBoughtService

    async def start(self) -> None:
        """Start background work owned by the services (none may block on a dependency)."""
        await self.catalog_cache.start()
        await self.admission.start()  # sold-out and inactive sales refused without Redis
        self.orders_upkeep.start()  # resumes interrupted checkouts now, then periodically

    async def stop(self) -> None:
        """Stop background work, let running checkouts finish, then answer the script
        calls already batched."""
        await self.catalog_cache.stop()
        await self.orders_upkeep.stop()
        await self.admission.close()
        await self.room.close()


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)


def build_services(settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool) -> Services:
    signer = TokenSigner(secret=settings.secret, ttl_seconds=settings.token_ttl_seconds,
                         admin_token=settings.admin_token)
    standings = Standings(pool=pool, redis=redis, ttl=settings.account_cache_seconds)
    throttle = Throttle(redis=redis, login_attempts=settings.login_attempts,
                        login_delay=settings.login_delay,
                        signups_per_hour=settings.signups_per_hour)
    catalog_cache = CatalogCache(redis=redis)
    products = Products(pool=pool, cache=catalog_cache)
    categories = Categories(pool=pool, cache=catalog_cache)
    suggestions = Suggestions(pool=pool)
    # One admission (one pipelined script connection) for the whole process.
    admission = Admission(redis, rate_limit=settings.rate_limit,
                          wait_replicas=settings.redis_wait_replicas,
                          wait_timeout=settings.dependency_timeout)
    sales = Sales(pool=pool, redis=redis)
    carts = Carts(pool=pool, redis=redis)
    payments = Payments(pool=pool, card=SimulatedCardProvider(pool=pool,
                                                              outcome_of=simulated_outcome),
                        wallet=WalletProvider(pool=pool), cod=CashOnDelivery())
    checkout = Checkout(pool=pool, rules=PricingRules.from_settings(settings),
                        admission=admission, sales=sales, carts=carts, payments=payments)
    order_tasks = OrderTasks(pool=pool, payments=payments, admission=admission)
    return Services(
        settings=settings, redis=redis, pool=pool, signer=signer, standings=standings,
        accounts=Accounts(pool=pool, signer=signer, standings=standings,
                          hasher=Hasher(log2_n=settings.password_cost), throttle=throttle),
        admission=admission,
        sales=sales,
        room=WaitingRoom(redis, secret=settings.secret,
                         join_rate=settings.queue_join_rate),
        products=products,
        categories=categories,
        catalog_cache=catalog_cache,
        browse=Browse(pool=pool, cache=catalog_cache, products=products),
        search=Search(pool=pool, cache=catalog_cache, products=products,
                      suggestions=suggestions, categories=categories,
                      hot_words=settings.search_hot_words),
        suggestions=suggestions,
        reviews=Reviews(pool=pool, cache=catalog_cache),
        sellers=Sellers(pool=pool),
        carts=carts,
        payments=payments,
        checkout=checkout,
        orders=Orders(pool=pool, sales=sales, tasks=order_tasks),
        coupons=Coupons(pool=pool),
        returns=Returns(pool=pool, tasks=order_tasks),
        orders_upkeep=Upkeep(checkout=checkout, tasks=order_tasks),
        wishlists=Wishlists(pool=pool),
        also_bought=AlsoBoughtService(pool=pool),
    )


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
