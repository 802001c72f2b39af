"""Bearer tokens: JWT HS256 signed with FLASHSALE_SECRET, verified without a database.

A token names the user and the account's token version when it was issued; the role it
carries is a hint only: accounts/standing.py checks both against the account.

Verification results are cached per token string (bounded), so the reservation hot path
pays for one HMAC per token, not per request; expiry is still checked on every use.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import jwt

from engine.errors import Forbidden, Unauthorized

ROLES = ("customer", "seller", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    role: str
    expires_at: float
    version: int = 0  # the account's token version when this token was issued
    operator: bool = False  # the FLASHSALE_ADMIN_TOKEN holder, not a user

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("This needs an administrator.")


class TokenSigner:
    def __init__(self, *, secret: str, ttl_seconds: int, admin_token: str = "",
                 cache_size: int = 100_000) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._admin_token = admin_token.encode()
        self._cache: dict[str, Principal] = {}
        self._cache_size = cache_size

    def issue(self, user_id: int, role: str, *, version: int = 0,
              ttl_seconds: int | None = None) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "role": role, "ver": version, "iat": now,
                  "exp": now + (self._ttl if ttl_seconds is None else ttl_seconds)}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at > now:
                return cached
            del self._cache[token]
            raise Unauthorized("The token has expired.")
        if self._admin_token and hmac.compare_digest(token.encode(), self._admin_token):
            return Principal(user_id=0, role="admin", expires_at=float("inf"), operator=True)
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                options={"require": ["sub", "exp", "role"]})
            version = claims.get("ver", 0)
            if type(version) is not int:
                raise TypeError("ver")
            principal = Principal(user_id=int(claims["sub"]), role=str(claims["role"]),
                                  expires_at=float(claims["exp"]), version=version)
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired.") from exc
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise Unauthorized("The token is not valid.") from exc
        if principal.role not in ROLES:
            raise Unauthorized("The token is not valid.")
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # cheap bound; a cold cache only costs one HMAC per token
        self._cache[token] = principal
        return principal

    def from_header(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("A bearer token is required.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Use 'Authorization: Bearer <token>'.")
        return self.verify(token.strip())
