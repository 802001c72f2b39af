"""Coupons: percent or amount off, minimum subtotal, expiry, total and per-user limits.

Redemption counts are exact under concurrency: ``redeem`` runs inside the checkout's
reserve transaction and takes one conditional update on the coupon row (total limit) and
one conditional upsert on the (coupon, user) row (per-user limit); concurrent buyers queue
on those row locks and each re-checks the limit against the committed count. A failed
checkout or a cancelled order gives its redemption back (``release``), once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from engine.errors import Conflict, CouponInvalid, NotFound, ValidationFailed
from orders.pricing import Discount

CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,31}$")
COLUMNS = ("coupon_id, code, percent_off, amount_off, min_subtotal, max_redemptions,"
           " per_user_limit, expires_at, redeemed, active, created_at")


@dataclass(frozen=True, slots=True)
class Applicable:
    """A coupon that applies to an order about to be priced."""
    coupon_id: int
    code: str
    discount: Discount


def invalid(reason: str, message: str) -> CouponInvalid:
    return CouponInvalid(message, details={"reason": reason})


class Coupons:
    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, *, code: str, percent_off: Decimal | None, amount_off: Decimal | None,
                     min_subtotal: Decimal, max_redemptions: int | None,
                     per_user_limit: int | None, expires_at: datetime | None) -> dict[str, Any]:
        if not CODE.match(code):
            raise ValidationFailed.at(
                "$.code", "3-32 letters, digits, '-' or '_', starting with a letter or digit")
        if (percent_off is None) == (amount_off is None):
            raise ValidationFailed.at("$", "give exactly one of percent_off and amount_off")
        if percent_off is not None and not Decimal(0) < percent_off <= Decimal(100):
            raise ValidationFailed.at("$.percent_off", "must be over 0 and at most 100")
        if amount_off is not None and amount_off <= 0:
            raise ValidationFailed.at("$.amount_off", "must be over 0")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise ValidationFailed.at("$.expires_at", "must be in the future")
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO coupons (code, percent_off, amount_off, min_subtotal,"
                " max_redemptions, per_user_limit, expires_at)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}",
                code.upper(), percent_off, amount_off, min_subtotal, max_redemptions,
                per_user_limit, expires_at)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"A coupon {code.upper()} already exists.") from exc
        return dict(row)

    async def get(self, code: str) -> dict[str, Any]:
        row = await self._pool.fetchrow(
            f"SELECT {COLUMNS} FROM coupons WHERE upper(code) = upper($1)", code)
        if row is None:
            raise NotFound("No such coupon.")
        return dict(row)

    async def all(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(f"SELECT {COLUMNS} FROM coupons ORDER BY coupon_id")
        return [dict(r) for r in rows]

    @staticmethod
    async def applicable(conn: asyncpg.Connection, code: str, *, user_id: int,
                         subtotal: Decimal) -> Applicable:
        """Check a coupon against an order about to be priced.
        Limits are checked again, exactly, when the coupon is redeemed."""
        row = await conn.fetchrow(
            f"SELECT {COLUMNS}, now() AS now, coalesce((SELECT uses FROM coupon_usage u"
            " WHERE u.coupon_id = c.coupon_id AND u.user_id = $2), 0) AS used"
            " FROM coupons c WHERE upper(code) = upper($1)", code, user_id)
        if row is None or not row["active"]:
            raise invalid("unknown", "No such coupon.")
        if row["expires_at"] is not None and row["expires_at"] <= row["now"]:
            raise invalid("expired", "The coupon has expired.")
        if subtotal < row["min_subtotal"]:
            raise invalid("min_subtotal",
                          f"The coupon needs a subtotal of at least {row['min_subtotal']}.")
        if row["max_redemptions"] is not None and row["redeemed"] >= row["max_redemptions"]:
            raise invalid("exhausted", "The coupon has been used up.")
        if row["per_user_limit"] is not None and row["used"] >= row["per_user_limit"]:
            raise invalid("per_user_limit", "You have already used this coupon.")
        return Applicable(row["coupon_id"], row["code"],
                          Discount(percent_off=row["percent_off"], amount_off=row["amount_off"]))

    @staticmethod
    async def redeem(conn: asyncpg.Connection, *, coupon_id: int, user_id: int,
                     checkout_id: int, order_id: int, discount: Decimal) -> None:
        """Take one redemption inside the caller's transaction, or raise CouponInvalid
        (the caller's transaction then rolls back whatever it did before)."""
        taken = await conn.fetchrow(
            "UPDATE coupons SET redeemed = redeemed + 1 WHERE coupon_id = $1 AND active"
            " AND (expires_at IS NULL OR expires_at > now())"
            " AND (max_redemptions IS NULL OR redeemed < max_redemptions)"
            " RETURNING per_user_limit", coupon_id)
        if taken is None:
            raise invalid("exhausted", "The coupon has been used up or has expired.")
        limit = taken["per_user_limit"]
        uses = await conn.fetchval(
            "INSERT INTO coupon_usage AS u (coupon_id, user_id, uses) VALUES ($1, $2, 1)"
            " ON CONFLICT (coupon_id, user_id) DO UPDATE SET uses = u.uses + 1"
            " WHERE $3::int IS NULL OR u.uses < $3::int RETURNING uses",
            coupon_id, user_id, limit)
        if uses is None:
            raise invalid("per_user_limit", "You have already used this coupon.")
        await conn.execute(
            "INSERT INTO coupon_redemptions (checkout_id, coupon_id, user_id, order_id, discount)"
            " VALUES ($1, $2, $3, $4, $5)", checkout_id, coupon_id, user_id, order_id, discount)

    @staticmethod
    async def release(conn: asyncpg.Connection, *, checkout_id: int) -> bool:
        """Give a checkout's redemption back (idempotent); True when this call did it."""
        row = await conn.fetchrow(
            "UPDATE coupon_redemptions SET status = 'released', released_at = now()"
            " WHERE checkout_id = $1 AND status = 'redeemed' RETURNING coupon_id, user_id",
            checkout_id)
        if row is None:
            return False
        await conn.execute("UPDATE coupons SET redeemed = redeemed - 1 WHERE coupon_id = $1",
                           row["coupon_id"])
        await conn.execute(
            "UPDATE coupon_usage SET uses = uses - 1 WHERE coupon_id = $1 AND user_id = $2",
            row["coupon_id"], row["user_id"])
        return True
