"""Accounts: users, login, addresses, payment methods, wallet credit."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from accounts.cards import tokenize_card
from accounts.passwords import Hasher, check_password
from accounts.standing import Standing, Standings
from accounts.throttle import Throttle
from accounts.tokens import TokenSigner
from engine.errors import (
    REDIS_DOWN,
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    Unauthorized,
    ValidationFailed,
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_ADDRESSES = 20  # per user; enough for anyone, not enough to fill a disk
MAX_PAYMENT_METHODS = 20


class Accounts:
    def __init__(self, *, pool: asyncpg.Pool, signer: TokenSigner, standings: Standings,
                 hasher: Hasher, throttle: Throttle) -> None:
        self._pool = pool
        self._signer = signer
        self._standings = standings
        self._hasher = hasher
        self._throttle = throttle

    # -- users ---------------------------------------------------------------------------
    async def signup(self, *, email: str, password: str, name: str, client: str,
                     role: str = "customer") -> dict[str, Any]:
        email = email.strip()
        if not _EMAIL.match(email):
            raise ValidationFailed.at("$.email", "not a valid email address")
        check_password(password)
        if not name.strip():
            raise ValidationFailed.at("$.name", "must not be empty")
        await self._throttle.signup(client)
        # scrypt is CPU-bound: keep it off the event loop.
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        try:
            user_id = await self._pool.fetchval(
                "INSERT INTO users (email, name, password_hash, role) VALUES ($1, $2, $3, $4)"
                " RETURNING user_id", email, name.strip(), password_hash, role)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("An account with this email already exists.") from exc
        # Best effort: a new account has no standing anywhere to replace, and a reader that
        # misses it fills it from Postgres.
        with contextlib.suppress(*REDIS_DOWN):
            await self._standings.changed(user_id, Standing(role=role, version=0))
        return {"user_id": user_id, "token": self._signer.issue(user_id, role, version=0)}

    async def login(self, *, email: str, password: str, client: str) -> dict[str, Any]:
        await self._throttle.login_attempt(email, client)
        row = await self._pool.fetchrow(
            "SELECT user_id, password_hash, role, token_version FROM users"
            " WHERE lower(email) = lower($1)", email.strip())
        stored = row["password_hash"] if row else None
        ok = await asyncio.to_thread(self._hasher.verify, password, stored)
        if not (row and ok):
            raise Unauthorized("Wrong email or password.")
        await self._throttle.login_succeeded(email, client)
        if self._hasher.needs_rehash(stored):  # made at an older cost: store today's
            fresh = await asyncio.to_thread(self._hasher.hash, password)
            await self._pool.execute(
                "UPDATE users SET password_hash = $3 WHERE user_id = $1"
                " AND password_hash = $2", row["user_id"], stored, fresh)
        return {"user_id": row["user_id"],
                "token": self._signer.issue(row["user_id"], row["role"],
                                            version=row["token_version"])}

    async def get_user(self, user_id: int) -> dict[str, Any]:
        row = await self._pool.fetchrow(
            "SELECT user_id, email, name, role, wallet_balance FROM users WHERE user_id = $1",
            user_id)
        if row is None:
            raise NotFound("No such user.")
        return dict(row)

    async def set_role(self, user_id: int, role: str) -> dict[str, Any]:
        """Grant a role. The user's tokens are revoked (the version moves on): the next
        sign-in gives a token, and every gateway applies the role within seconds."""
        row = await self._pool.fetchrow(
            "UPDATE users SET role = $2, token_version = token_version + 1"
            " WHERE user_id = $1 RETURNING user_id, email, name, role, token_version",
            user_id, role)
        if row is None:
            raise NotFound("No such user.")
        await self._standings.changed(user_id, Standing(role=row["role"],
                                                        version=row["token_version"]))
        return dict(row)

    async def revoke_tokens(self, user_id: int) -> None:
        """Log out everywhere: every token issued so far stops working."""
        row = await self._pool.fetchrow(
            "UPDATE users SET token_version = token_version + 1 WHERE user_id = $1"
            " RETURNING role, token_version", user_id)
        if row is None:
            raise NotFound("No such user.")
        await self._standings.changed(user_id, Standing(role=row["role"],
                                                        version=row["token_version"]))

    async def change_password(self, user_id: int, *, current: str, new: str, client: str
                              ) -> dict[str, Any]:
        """Change the password (the current one is required, and guessing it is throttled
        as a login is); every older token is revoked and a fresh one returned."""
        row = await self._pool.fetchrow(
            "SELECT email, password_hash FROM users WHERE user_id = $1", user_id)
        if row is None:
            raise NotFound("No such user.")
        await self._throttle.login_attempt(row["email"], client)
        stored = row["password_hash"]
        if not await asyncio.to_thread(self._hasher.verify, current, stored):
            raise Unauthorized("The current password is wrong.")
        await self._throttle.login_succeeded(row["email"], client)
        check_password(new, path="$.new_password")
        password_hash = await asyncio.to_thread(self._hasher.hash, new)
        row = await self._pool.fetchrow(
            "UPDATE users SET password_hash = $2, token_version = token_version + 1"
            " WHERE user_id = $1 RETURNING role, token_version", user_id, password_hash)
        await self._standings.changed(user_id, Standing(role=row["role"],
                                                        version=row["token_version"]))
        return {"user_id": user_id, "token": self._signer.issue(
            user_id, row["role"], version=row["token_version"])}

    async def credit_wallet(self, user_id: int, amount: Decimal,
                            idempotency_key: str | None = None) -> Decimal:
        """Credit the wallet and record it in the wallet ledger (``credit:<user>:<key>``),
        as every payment's movement is: the ledger sums to the balance. The same key again
        credits nothing and answers the balance (a retried credit is not paid twice); with
        another amount it is refused (422 idempotency_key_reused). Without a key, every
        call is a credit of its own."""
        if amount <= 0:
            raise ValidationFailed.at("$.amount", "must be greater than 0")
        reference = f"credit:{user_id}:{idempotency_key or uuid.uuid4().hex}"
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                entry = await conn.fetchval(
                    "INSERT INTO wallet_ledger (user_id, reference, amount, balance_after)"
                    " VALUES ($1, $2, $3, 0) ON CONFLICT (reference) DO NOTHING"
                    " RETURNING entry_id", user_id, reference, amount)
            except asyncpg.ForeignKeyViolationError:
                raise NotFound("No such user.") from None
            if entry is None:  # this key's credit was made already
                made = await conn.fetchval(
                    "SELECT amount FROM wallet_ledger WHERE reference = $1", reference)
                if made != amount:
                    raise IdempotencyKeyReused()
                return await conn.fetchval(
                    "SELECT wallet_balance FROM users WHERE user_id = $1", user_id)
            balance = await conn.fetchval(
                "UPDATE users SET wallet_balance = wallet_balance + $2 WHERE user_id = $1"
                " RETURNING wallet_balance", user_id, amount)
            await conn.execute("UPDATE wallet_ledger SET balance_after = $2 WHERE entry_id = $1",
                               entry, balance)
            return balance

    # -- addresses -----------------------------------------------------------------------
    async def add_address(self, user_id: int, *, line1: str, line2: str | None, city: str,
                          postal_code: str, country: str) -> dict[str, Any]:
        for path, value in (("$.line1", line1), ("$.city", city),
                            ("$.postal_code", postal_code), ("$.country", country)):
            if not value.strip():
                raise ValidationFailed.at(path, "must not be empty")
        async with self._pool.acquire() as conn, conn.transaction():
            await self._below_cap(conn, user_id, "addresses", MAX_ADDRESSES)
            row = await conn.fetchrow(
                "INSERT INTO addresses (user_id, line1, line2, city, postal_code, country)"
                " VALUES ($1, $2, $3, $4, $5, $6)"
                " RETURNING address_id, line1, line2, city, postal_code, country",
                user_id, line1.strip(), line2, city.strip(), postal_code.strip(),
                country.strip())
        return dict(row)

    @staticmethod
    async def _below_cap(conn: asyncpg.Connection, user_id: int, table: str, cap: int) -> None:
        """Refuse (422) a user's row beyond ``cap`` in ``table``; the user's row lock makes
        parallel adds count one after the other."""
        if await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE",
                               user_id) is None:
            raise NotFound("No such user.")
        if await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1",
                               user_id) >= cap:
            raise ValidationFailed.at("$", f"at most {cap} {table.replace('_', ' ')} per user")

    async def list_addresses(self, user_id: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT address_id, line1, line2, city, postal_code, country FROM addresses"
            " WHERE user_id = $1 ORDER BY address_id", user_id)
        return [dict(r) for r in rows]

    async def get_address(self, user_id: int, address_id: int) -> dict[str, Any]:
        # Scoped by owner: another user's address is indistinguishable from a missing one.
        row = await self._pool.fetchrow(
            "SELECT address_id, line1, line2, city, postal_code, country FROM addresses"
            " WHERE address_id = $1 AND user_id = $2", address_id, user_id)
        if row is None:
            raise NotFound("No such address.")
        return dict(row)

    # -- payment methods -----------------------------------------------------------------
    async def add_payment_method(self, user_id: int, *, type: str, card_number: str | None,
                                 exp_month: int | None, exp_year: int | None,
                                 cvc: str | None) -> dict[str, Any]:
        brand = last4 = token = None
        if type == "card":
            missing = [name for name, value in (("card_number", card_number),
                       ("exp_month", exp_month), ("exp_year", exp_year), ("cvc", cvc))
                       if value is None]
            if missing:
                raise ValidationFailed(
                    "A card needs card_number, exp_month, exp_year and cvc.",
                    details=[{"path": f"$.{m}", "message": "required for a card"}
                             for m in missing])
            now = datetime.now(UTC)
            card = tokenize_card(card_number, exp_month, exp_year, cvc,
                                 today=(now.year, now.month))
            brand, last4, token = card.brand, card.last4, card.provider_token
        elif any(v is not None for v in (card_number, exp_month, exp_year, cvc)):
            raise ValidationFailed.at("$.type", f"a {type} payment method takes no card fields")
        async with self._pool.acquire() as conn, conn.transaction():
            await self._below_cap(conn, user_id, "payment_methods", MAX_PAYMENT_METHODS)
            row = await conn.fetchrow(
                "INSERT INTO payment_methods (user_id, type, brand, last4, exp_month,"
                " exp_year, provider_token) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " RETURNING payment_method_id, type, brand, last4, exp_month, exp_year",
                user_id, type, brand, last4, exp_month if type == "card" else None,
                exp_year if type == "card" else None, token)
        return dict(row)

    async def list_payment_methods(self, user_id: int) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT payment_method_id, type, brand, last4, exp_month, exp_year"
            " FROM payment_methods WHERE user_id = $1 ORDER BY payment_method_id", user_id)
        return [dict(r) for r in rows]

    async def get_payment_method(self, user_id: int, payment_method_id: int) -> dict[str, Any]:
        """The owner's payment method, with the provider token (for the payment step)."""
        row = await self._pool.fetchrow(
            "SELECT payment_method_id, type, brand, last4, exp_month, exp_year, provider_token"
            " FROM payment_methods WHERE payment_method_id = $1 AND user_id = $2",
            payment_method_id, user_id)
        if row is None:
            raise NotFound("No such payment method.")
        return dict(row)
