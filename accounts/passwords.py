"""Passwords: the policy a new one must meet, and scrypt hashes compared in constant time.

scrypt runs at OWASP's recommended cost (N=2^17, r=8, p=1: 128 MiB and a few hundred
milliseconds per hash; the setting FLASHSALE_PASSWORD_COST is log2 N, lowered only by the
tests). The parameters are stored with each hash, so hashes made at an older cost still
verify, and ``Hasher.needs_rehash`` tells the login to store a new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import cache
from importlib import resources

from engine.errors import ValidationFailed

N, R, P, DKLEN = 2**17, 8, 1, 32
MAX_MEMORY = 256 * 1024 * 1024  # scrypt needs 128 * N * r bytes, plus headroom
MIN_LENGTH = 10
MAX_LENGTH = 256


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=DKLEN,
                            maxmem=MAX_MEMORY)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return "$".join(["scrypt", str(n), str(r), str(p), *encoded])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=MAX_MEMORY)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


class Hasher:
    """Hashing at one cost (``log2_n``), off the event loop's thread by the caller."""

    def __init__(self, *, log2_n: int = 17) -> None:
        self.n = 2**log2_n
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        return hash_password(password, n=self.n)

    def verify(self, password: str, stored: str | None) -> bool:
        """Check ``password``; an unknown account (``stored`` None) costs the same time."""
        if stored is None:
            if self._dummy is None:
                self._dummy = self.hash("not-a-real-password")
            verify_password(password, self._dummy)
            return False
        return verify_password(password, stored)

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` was made at another cost than this hasher's."""
        return stored.split("$")[1:4] != [str(self.n), str(R), str(P)]


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("accounts").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))


def check_password(password: str, *, path: str = "$.password") -> None:
    """422 unless the password is long enough and not a well-known one."""
    if len(password) < MIN_LENGTH:
        raise ValidationFailed.at(path, f"must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValidationFailed.at(path, f"must be at most {MAX_LENGTH} characters")
    if not password.strip() or len(set(password)) < 4:
        raise ValidationFailed.at(path, "must not be blank or one character repeated")
    if password.lower() in common_passwords() or password.strip().lower() in common_passwords():
        raise ValidationFailed.at(path, "is one of the most common passwords; choose another")
