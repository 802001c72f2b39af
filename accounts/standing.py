"""A user's standing: the role and token version the account has now.

A bearer token proves who signed in and when; what the holder may do is read from the
account. Every authenticated request compares the token's version with the account's
(role change, password change and "log out everywhere" bump it, revoking every token
issued before) and takes the role from the account, so a demoted admin loses the power
within ``ttl`` seconds and a token of a deleted or unknown user is refused.

The reservation path must not wait on Postgres, so the standing is read through two
caches: this process's (at most ``ttl`` seconds old) and a Redis hash per user, written
by whoever changes the account and filled from Postgres on a miss.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg
import redis.asyncio as aioredis

from accounts.tokens import Principal
from engine.errors import Unauthorized
from engine.keys import account_key
from engine.scripts import Script

REDIS_TTL_SECONDS = 3600
GONE = ""  # the role stored for a user id that has no account
STORE_STANDING = Script("store_standing", resources.files("lua").joinpath(
    "store_standing.lua").read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Standing:
    role: str  # GONE: no such user
    version: int


class Standings:
    def __init__(self, *, pool: asyncpg.Pool, redis: aioredis.Redis, ttl: float = 2.0,
                 cache_size: int = 100_000) -> None:
        self._pool = pool
        self._redis = redis
        self.ttl = ttl
        self._cache: dict[int, tuple[float, Standing]] = {}
        self._cache_size = cache_size

    async def authorize(self, principal: Principal) -> Principal:
        """The principal with the account's current role; 401 when the account is gone
        or the token was revoked."""
        if principal.operator:
            return principal
        standing = await self.current(principal.user_id)
        if standing.role == GONE:
            raise Unauthorized("The token's account does not exist.")
        if standing.version != principal.version:
            raise Unauthorized("The token has been revoked; sign in again.")
        if standing.role == principal.role:
            return principal
        return dataclasses.replace(principal, role=standing.role)

    async def current(self, user_id: int) -> Standing:
        now = time.monotonic()
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        raw = await self._redis.hmget(account_key(user_id), "role", "ver")
        if raw[0] is not None and raw[1] is not None:
            standing = Standing(role=raw[0].decode(), version=int(raw[1]))
        else:
            row = await self._pool.fetchrow(
                "SELECT role, token_version FROM users WHERE user_id = $1", user_id)
            if row is None:  # kept in this process only: the id may be signed up later
                standing = Standing(role=GONE, version=-1)
            else:
                standing = Standing(role=row["role"], version=row["token_version"])
                await self._store(user_id, standing)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[user_id] = (now + self.ttl, standing)
        return standing

    async def changed(self, user_id: int, standing: Standing) -> None:
        """Publish an account's new standing (after its Postgres commit): this process
        sees it at once, the others within ``ttl`` seconds."""
        self._cache.pop(user_id, None)
        await self._store(user_id, standing)

    async def _store(self, user_id: int, standing: Standing) -> None:
        await STORE_STANDING(self._redis, [account_key(user_id)],
                             [standing.role, standing.version, REDIS_TTL_SECONDS])
