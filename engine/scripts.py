"""Lua scripts: read from the installed ``lua`` package once, called by SHA.

Each script is sent with ``lua/prelude.lua`` in front (the Redis clock in milliseconds,
the reservation record's parse and format), the way Redis lets scripts share code.

``Script.__call__`` runs EVALSHA and, when Redis answers NOSCRIPT (a restart or a
``SCRIPT FLUSH``), loads the source again and retries once. engine/batching.py does the
same for calls sent in batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine import metrics
from engine.coalesce import Batch


class Script:
    def __init__(self, name: str, source: str, batch: Batch | None = None) -> None:
        self.name = name
        # Set for a script that decides many attempts in one run (engine/coalesce.py):
        # it answers a list, one answer per attempt.
        self.batch = batch
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._reloads = metrics.SCRIPT_RELOADS.labels(name)

    async def load(self, redis: aioredis.Redis) -> None:
        await redis.script_load(self.source)
        self.count_reload()

    def count_reload(self) -> None:
        self._reloads.inc()

    async def __call__(self, redis: aioredis.Redis, keys: Sequence[str],
                       args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


def _read(name: str) -> str:
    return resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


# Shared helpers (the Redis clock, the reservation record), sent in front of each script:
# Redis runs every script alone, so this is how scripts share code.
PRELUDE = _read("prelude")


def script(name: str, *shared: str, batch: Batch | None = None) -> Script:
    """``lua/<name>.lua`` with the prelude in front, and the ``shared`` parts of one family
    of scripts (the waiting room's ``room_advance``) between them."""
    return Script(name, "\n".join([PRELUDE, *(_read(part) for part in shared), _read(name)]),
                  batch)


# reserve.lua: sale_id, rate limit, channel; then user, quantity, key, client per attempt.
RESERVE_BATCH = Batch(common=3, fields=4, cap=64)


class Scripts:
    """Every script of ``lua/``, loaded once per process."""

    NAMES = ("reserve", "release", "confirm", "expire_holds", "load_tokens", "change_sale_state",
             "take_from_cart", "move_out", "move_in")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, script(name))
        self.reserve = script("reserve", batch=RESERVE_BATCH)

    reserve: Script
    release: Script
    confirm: Script
    expire_holds: Script
    load_tokens: Script
    change_sale_state: Script
    take_from_cart: Script  # orders/cart.py: a checkout's units leave the cart
    move_out: Script  # engine/buckets.py: tokens leave one bucket of a sale...
    move_in: Script  # ...and reach another, once

    async def load_all(self, redis: aioredis.Redis) -> None:
        for name in self.NAMES:
            await redis.script_load(getattr(self, name).source)


SCRIPTS = Scripts()
