"""Typed application state: the service objects built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from accounts.service import Accounts
from accounts.tokens import TokenSigner
from catalog.products import Categories, Products
from engine.admission import Admission
from engine.sales import Sales
from engine.settings import Settings


@dataclass(slots=True)
class Services:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    signer: TokenSigner
    accounts: Accounts
    admission: Admission
    sales: Sales
    products: Products
    categories: Categories

    async def start(self) -> None:
        """Start background work owned by the services (none may block on a dependency)."""

    async def stop(self) -> None:
        """Stop background work; answer the script calls already batched."""
        await self.admission.close()


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)


def build_services(settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool) -> Services:
    signer = TokenSigner(secret=settings.secret, ttl_seconds=settings.token_ttl_seconds,
                         admin_token=settings.admin_token)
    return Services(
        settings=settings, redis=redis, pool=pool, signer=signer,
        accounts=Accounts(pool=pool, signer=signer),
        admission=Admission(redis, rate_limit=settings.rate_limit),
        sales=Sales(pool=pool, redis=redis),
        products=Products(pool=pool),
        categories=Categories(pool=pool),
    )


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
