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

import asyncio
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
        self._pending: dict[int, asyncio.Future[Standing]] = {}
        self._flush: asyncio.Future[None] | None = None

    def authorize_cached(self, principal: Principal) -> Principal | None:
        """``authorize`` from this process's cache, or None when it must be read."""
        if principal.operator:
            return principal
        cached = self._cache.get(principal.user_id)
        if cached is None or cached[0] <= time.monotonic():
            return None
        return self._check(principal, cached[1])

    async def authorize(self, principal: Principal) -> Principal:
        """The principal with the account's current role; 401 when the account is gone
        or the token was revoked."""
        if principal.operator:
            return principal
        return self._check(principal, await self.current(principal.user_id))

    @staticmethod
    def _check(principal: Principal, standing: Standing) -> Principal:
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
        # Misses of one loop turn share one pipelined Redis read (and one Postgres query
        # for the accounts Redis does not hold): a burst of new users costs one round
        # trip, not one pooled connection each.
        waiting = self._pending.get(user_id)
        if waiting is None:
            waiting = self._pending[user_id] = asyncio.get_running_loop().create_future()
            if self._flush is None:
                self._flush = asyncio.ensure_future(self._load_pending())
        return await asyncio.shield(waiting)

    async def _load_pending(self) -> None:
        await asyncio.sleep(0)  # let the rest of this loop turn's callers join
        batch, self._pending, self._flush = self._pending, {}, None
        try:
            found = await self._load(list(batch))
        except Exception as exc:
            for waiting in batch.values():
                if not waiting.done():
                    waiting.set_exception(exc)
                    waiting.exception()  # retrieved here: a caller may have gone away
            return
        until = time.monotonic() + self.ttl
        if len(self._cache) + len(found) > self._cache_size:
            self._cache.clear()
        for user_id, waiting in batch.items():
            self._cache[user_id] = (until, found[user_id])
            if not waiting.done():
                waiting.set_result(found[user_id])

    async def _load(self, user_ids: list[int]) -> dict[int, Standing]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hmget(account_key(user_id), "role", "ver")
            rows = await pipe.execute()
        found = {user_id: Standing(role=role.decode(), version=int(ver))
                 for user_id, (role, ver) in zip(user_ids, rows, strict=True)
                 if role is not None and ver is not None}
        missing = [user_id for user_id in user_ids if user_id not in found]
        if missing:
            records = await self._pool.fetch(
                "SELECT user_id, role, token_version FROM users WHERE user_id = ANY($1)",
                missing)
            for row in records:
                standing = Standing(role=row["role"], version=row["token_version"])
                found[row["user_id"]] = standing
                await self._store(row["user_id"], standing)
            for user_id in missing:  # kept in this process only: the id may be signed up
                found.setdefault(user_id, Standing(role=GONE, version=-1))
        return found

    async def changed(self, user_id: int, standing: Standing) -> None:
        """Publish an account's new standing (after its Postgres commit): this process
        sees it at once, the others within ``ttl`` seconds."""
        self._cache[user_id] = (time.monotonic() + self.ttl, standing)
        await self._store(user_id, standing)

    async def _store(self, user_id: int, standing: Standing) -> None:
        await STORE_STANDING(self._redis, [account_key(user_id)],
                             [standing.role, standing.version, REDIS_TTL_SECONDS])
