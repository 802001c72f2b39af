"""Catalog caches and the messages that keep them coherent across gateway workers.

Product page: in-process, ``product_ttl`` (1 s) per entry, one database load per product
at a time (concurrent misses share it), negative entries for unknown ids. Writes through
the catalog (seller edits, stock, reviews) drop the entry at once in this worker and
publish the id on a Redis channel that every worker listens to, so the others drop it
within milliseconds. Stock changed elsewhere (checkout, flash-sale loading) is seen when
the entry expires: a product page's figures are at most ``product_ttl`` old.

Results (search facets and ranked ids, listing totals, the category tree): shared in
Redis for ``result_ttl`` (60 s), under a key that includes the catalog *generation*. A
change that moves listings (product created, renamed, re-priced, re-categorised, status
changed; a new category) increments the generation, so every derived result is dropped
at once; each worker learns the new generation from the same channel. Ratings from new
reviews reach cached results when they expire. Items are always hydrated from the
product rows, so the price, stock and status a shopper sees are never from this cache.

Redis down: results are computed without the cache, the product cache works on its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis

from catalog.records import Product
from engine.codec import text
from engine.connections import db_of
from engine.errors import REDIS_DOWN, NotFound
from engine.keys import catalog_changes_channel
from engine.pubsub import ChannelListener

log = logging.getLogger("flashsale.catalog")

# Key names of the catalog, in one place (the change channel: engine.keys).
GENERATION_KEY = "fs:catalog:generation"
RESULT_PREFIX = "fs:catalog:result"

T = TypeVar("T")
_MISSING = object()


class CatalogCache:
    def __init__(self, *, redis: aioredis.Redis, product_ttl: float = 1.0,
                 result_ttl: int = 60, max_products: int = 50_000) -> None:
        self._redis = redis
        self._channel = catalog_changes_channel(db_of(redis))
        self.product_ttl = product_ttl
        self.result_ttl = result_ttl
        self._max_products = max_products
        self._products: dict[int, tuple[float, Product | None]] = {}
        self._loading: dict[int, asyncio.Future[Product | None]] = {}
        self._generation: int | None = None
        # The TTLs are the fallback while the listener is away.
        self._listener = ChannelListener(redis, self._channel, name="catalog-changes",
                                         on_message=self._apply, on_subscribed=self._subscribed)
        self.hits = self.misses = 0

    # -- product page --------------------------------------------------------------------
    async def product(self, product_id: int,
                      load: Callable[[int], Awaitable[Product | None]]) -> Product:
        entry = self._products.get(product_id)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            self.hits += 1
            found = entry[1]
        else:
            self.misses += 1
            found = await self._load_once(product_id, load)
        if found is None:
            raise NotFound("No such product.")
        return found

    async def _load_once(self, product_id: int,
                         load: Callable[[int], Awaitable[Product | None]]) -> Product | None:
        pending = self._loading.get(product_id)
        if pending is None:
            # A task of its own: a waiter that is cancelled does not cancel the others' load.
            pending = asyncio.ensure_future(load(product_id))
            self._loading[product_id] = pending
            pending.add_done_callback(self._loaded(product_id, time.monotonic()))
        return await asyncio.shield(pending)

    def _loaded(self, product_id: int, started: float
                ) -> Callable[[asyncio.Future[Product | None]], None]:
        def store(future: asyncio.Future[Product | None]) -> None:
            # A load that was invalidated while running may carry old figures: not kept.
            if self._loading.get(product_id) is not future:
                return
            del self._loading[product_id]
            if future.cancelled() or future.exception() is not None:
                return
            if len(self._products) >= self._max_products:
                self._evict(started)
            self._products[product_id] = (started + self.product_ttl, future.result())
        return store

    def _evict(self, now: float) -> None:
        expired = [k for k, (until, _) in self._products.items() if until <= now]
        for key in expired:
            del self._products[key]
        while len(self._products) >= self._max_products:  # oldest first (insertion order)
            del self._products[next(iter(self._products))]

    def forget_products(self, product_ids: Iterable[int]) -> None:
        for product_id in product_ids:
            self._products.pop(product_id, None)
            self._loading.pop(product_id, None)  # a load in flight may hold old figures

    # -- derived results -----------------------------------------------------------------
    async def generation(self) -> int:
        if self._generation is None:
            raw = await self._redis.get(GENERATION_KEY)
            self._generation = int(raw or 0)
        return self._generation

    async def result(self, kind: str, params: Any, type_: type[T],
                     compute: Callable[[], Awaitable[T]]) -> T:
        """``compute()``'s value for ``params``, shared by all workers for ``result_ttl``."""
        try:
            digest = hashlib.sha256(msgspec.msgpack.encode(params)).hexdigest()[:32]
            key = f"{RESULT_PREFIX}:{await self.generation()}:{kind}:{digest}"
            raw = await self._redis.get(key)
        except REDIS_DOWN:
            return await compute()
        if raw is not None:
            try:
                return msgspec.msgpack.decode(raw, type=type_)
            except msgspec.DecodeError:  # written by another version: recompute
                pass
        value = await compute()
        with contextlib.suppress(*REDIS_DOWN):
            await self._redis.set(key, msgspec.msgpack.encode(value), ex=self.result_ttl)
        return value

    # -- invalidation --------------------------------------------------------------------
    async def changed(self, product_ids: Iterable[int] = (), *, listings: bool) -> None:
        """Call after a commit: drop the products here and in every worker; with
        ``listings``, also every derived result (new generation)."""
        ids = sorted(set(product_ids))
        self.forget_products(ids)
        parts = []
        try:
            if listings:
                self._generation = int(await self._redis.incr(GENERATION_KEY))
                parts.append(f"g{self._generation}")
            parts.extend(f"p{i}" for i in ids)
            if parts:
                await self._redis.publish(self._channel, " ".join(parts))
        except REDIS_DOWN:
            # The write is committed; the other workers catch up when entries expire.
            log.warning("catalog change not broadcast: Redis is unavailable")
            if listings:
                self._generation = None

    def _apply(self, message: bytes | str) -> None:
        for part in text(message).split():
            kind, value = part[:1], part[1:]
            if not value.isdigit():
                continue
            if kind == "p":
                self.forget_products((int(value),))
            elif kind == "g":
                self._generation = max(self._generation or 0, int(value))

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    async def _subscribed(self) -> None:
        """Messages may have been missed while not subscribed: start afresh."""
        self._products.clear()
        self._generation = None
