"""Password hashing with scrypt (memory-hard), compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# n=2**14, r=8 uses 16 MiB per hash: slow enough to hurt an attacker, quick enough (~50 ms)
# for a login. Parameters are stored with each hash so they can be raised later.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return "$".join(["scrypt", str(_N), str(_R), str(_P), *encoded])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


# A hash to check against when the email is unknown, so a login takes the same time
# whether or not the account exists.
DUMMY_HASH = hash_password("not-a-real-password")
