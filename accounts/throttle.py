"""Credential throttling: logins per account and per client address, sign-ups per
address, all in Redis so every gateway process counts together.

A login attempt is counted for its account and its address before the password is
checked (lua/throttle_login.lua): the first ``free`` attempts go through, each further
one waits a delay that doubles up to ``max_delay``, answered 429 with Retry-After. A
right password clears the account's count and takes its attempt back from the address,
so an address signing many users in is not slowed, one guessing passwords is. Emails
are hashed before they name a key.
"""

from __future__ import annotations

import hashlib
import math
import time
from importlib import resources

import redis.asyncio as aioredis

from engine.errors import RateLimited
from engine.keys import login_key, signup_key
from engine.scripts import Script

THROTTLE_LOGIN = Script("throttle_login", resources.files("lua").joinpath(
    "throttle_login.lua").read_text(encoding="utf-8"))
FORGET_AFTER_MS = 15 * 60 * 1000
SIGNUP_WINDOW_SECONDS = 3600


def _account(email: str) -> str:
    return "a:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _address(address: str) -> str:
    return "ip:" + address


class Throttle:
    def __init__(self, *, redis: aioredis.Redis, login_attempts: int, login_delay: float,
                 login_max_delay: float = 300.0, signups_per_hour: int) -> None:
        self._redis = redis
        self.login_attempts = login_attempts  # per account; an address gets 4 times more
        self.login_delay_ms = int(login_delay * 1000)
        self.login_max_delay_ms = int(login_max_delay * 1000)
        self.signups_per_hour = signups_per_hour  # 0: no limit

    async def login_attempt(self, email: str, address: str) -> None:
        """Count a login attempt, or raise RateLimited while its delay runs."""
        if self.login_attempts <= 0:
            return
        now = int(time.time() * 1000)
        # The account first: attempts it refuses do not count against the address.
        for subject, free in ((_account(email), self.login_attempts),
                              (_address(address), 4 * self.login_attempts)):
            wait_ms = await THROTTLE_LOGIN(
                self._redis, [login_key(subject)],
                [now, free, self.login_delay_ms, self.login_max_delay_ms, FORGET_AFTER_MS])
            if wait_ms:
                raise RateLimited(math.ceil(int(wait_ms) / 1000),
                                  "Too many sign-in attempts; wait before trying again.")

    async def login_succeeded(self, email: str, address: str) -> None:
        if self.login_attempts <= 0:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(login_key(_account(email)))
            pipe.hincrby(login_key(_address(address)), "n", -1)
            pipe.pexpire(login_key(_address(address)), FORGET_AFTER_MS)
            await pipe.execute()

    async def signup(self, address: str) -> None:
        """Count a sign-up from ``address``; RateLimited beyond the hourly allowance."""
        if self.signups_per_hour <= 0:
            return
        key = signup_key(address)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, SIGNUP_WINDOW_SECONDS, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        if count > self.signups_per_hour:
            raise RateLimited(max(1, ttl), "Too many sign-ups from this address; try later.")
