"""Settings: one frozen object built from the environment (12-factor).

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal

DEV_SECRET = "flashsale-development-secret-change-me-in-production"
CLUSTER_CHOICES: dict[str, bool | None] = {
    "auto": None, "": None, "1": True, "true": True, "yes": True, "on": True,
    "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis Cluster: "1" (the URL names any node of a cluster), "0" (one server), or
    # "auto" (the default): read ``cluster_enabled`` from the server's INFO at start-up.
    redis_cluster: str = "auto"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/flashsale"
    # "development" allows the public development secret (make demo, the tests); any
    # other value is production: serve and reconcile refuse to start without a secret.
    env: str = "production"
    admin_token: str = ""  # empty: only users whose role is admin may act as admin
    secret: str = DEV_SECRET  # signs bearer tokens
    host: str = "127.0.0.1"
    port: int = 8080
    # Reservation requests per second allowed per user and per client address; 0 = off.
    rate_limit: int = 50
    # New waiting-room tickets per second per client address (burst twice that); 0 = off.
    queue_join_rate: int = 20
    token_ttl_seconds: int = 24 * 3600
    # Seconds a gateway may act on a user's role and token version before re-reading them.
    account_cache_seconds: float = 2.0
    # Logins: attempts per account without delay (an address gets 4x), then a delay of
    # login_delay seconds doubling per attempt; 0 attempts = no throttle.
    login_attempts: int = 5
    login_delay: float = 1.0
    signups_per_hour: int = 20  # per client address; 0 = no limit
    password_cost: int = 17  # log2 of scrypt's N (OWASP: 17); only tests lower it
    max_body_bytes: int = 64 * 1024
    # Slow clients: seconds to send a whole request body, and bodies one client address
    # may be sending at once (beyond: 429), so slow senders cannot hold every worker.
    body_timeout: float = 10.0
    body_reads_per_client: int = 32
    # Seconds a request waits for Redis or Postgres before answering 503.
    dependency_timeout: float = 1.5
    # Replicas that must acknowledge a hold (Redis WAIT) before it is answered; 0 = off.
    redis_wait_replicas: int = 0
    db_pool_max: int = 10
    # Very common search words answered from their own rows and counts (catalog/hot_terms.py);
    # false reads every search from the products heap (the benchmark's baseline).
    search_hot_words: bool = True
    # Redis connections per process; when all are busy a command waits for one (at most
    # dependency_timeout) rather than failing.
    redis_pool_max: int = 128
    # Checkout pricing rules (see README "Pricing").
    tax_rate: Decimal = Decimal("0.08")
    shipping_fee: Decimal = Decimal("5.00")
    free_shipping_over: Decimal = Decimal("50.00")
    # Reconciler
    reconcile_batch: int = 1000
    reconcile_block_ms: int = 200
    sweep_interval: float = 0.5
    claim_idle_ms: int = 5000
    metrics_port: int = 9101
    # One log line per HTTP request (request id, route, status, latency; never a token).
    access_log: bool = False
    # The reservation endpoint answered without aiohttp's per-request objects
    # (gateway/hot.py); 0 sends every request through aiohttp.
    hot_lane: bool = True
    # Fault injection for the chaos suite only (`make chaos`): the reconciler SIGKILLs
    # itself right after its Nth commit, before the XACK. 0 (the default) never.
    fault_kill_after_commit: int = 0

    def __post_init__(self) -> None:
        _check_url("database_url", self.database_url, ("postgresql", "postgres"))
        _check_url("redis_url", self.redis_url, ("redis", "rediss", "unix"))
        if self.redis_cluster.strip().lower() not in CLUSTER_CHOICES:
            raise ValueError(f"FLASHSALE_REDIS_CLUSTER={self.redis_cluster!r} is not 1, 0 "
                             "or auto")
        for name, low in (("port", 1), ("metrics_port", 0)):
            if not low <= getattr(self, name) <= 65535:
                raise ValueError(f"FLASHSALE_{name.upper()}={getattr(self, name)} is not a "
                                 f"port number ({low}-65535)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ``FLASHSALE_<NAME>`` variables, then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get("FLASHSALE_" + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update(overrides)
        return cls(**values)

    @property
    def cluster_mode(self) -> bool | None:
        """True or False as configured; None: detect it (INFO cluster)."""
        return CLUSTER_CHOICES[self.redis_cluster.strip().lower()]

    @property
    def uses_dev_secret(self) -> bool:
        return self.secret == DEV_SECRET

    def check_secret(self) -> None:
        """Refuse (ValueError, one line) to sign tokens with the public development secret
        outside development: anyone could mint an admin token with it."""
        if self.uses_dev_secret and self.env != "development":
            raise ValueError("FLASHSALE_SECRET is not set: set it to a long random value, or"
                             " set FLASHSALE_ENV=development to run with the public"
                             " development secret")


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        shown = f"{scheme}://..." if sep else "a value without a scheme"
        raise ValueError(f"FLASHSALE_{name.upper()} is {shown}; it must be a "
                         f"{' or '.join(s + '://' for s in schemes)} URL")
    if scheme != "unix" and not rest.split("/", 1)[0].rpartition("@")[2]:
        raise ValueError(f"FLASHSALE_{name.upper()} names no host ({scheme}://HOST:PORT/...)")


def _convert(name: str, type_name: str, raw: str) -> object:
    if type_name == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"FLASHSALE_{name.upper()}={raw!r} is not 1 or 0 (true or false)")
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "Decimal":
            return Decimal(raw)
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(f"FLASHSALE_{name.upper()}={raw!r} is not a valid {type_name}") from exc
    return raw
