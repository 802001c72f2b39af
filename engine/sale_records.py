"""A flash sale's records and their pure helpers: the shopper's view, Postgres columns,
the state moves an operator may make, the bucket rule, the room a row records, and the
identity that tells a sale from another with the same id (engine/sales.py uses them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from engine.errors import ValidationFailed
from engine.keys import MAX_BUCKETS
from engine.waiting_room import RoomConfig


def to_ms(moment: datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime | None:
    return None if not ms else datetime.fromtimestamp(ms / 1000, UTC)


def identity(sale: dict[str, Any]) -> str:
    """What tells this sale from another with the same id (a recreated database): its
    creation time in microseconds, kept in the sale's Redis meta."""
    return str(int(sale["created_at"].timestamp() * 1_000_000))


def foreign_message(sale_id: int) -> str:
    return (f"Redis already holds a different sale {sale_id} (left from another database?). "
            f"Point FLASHSALE_REDIS_URL at a clean Redis db, or delete the keys "
            f"'fs:{{s:{sale_id}}}:*' if that sale is gone for good.")


@dataclass(frozen=True, slots=True)
class SaleView:
    """What a shopper sees: read from Redis only."""
    sale_id: int
    product_id: int
    price: Decimal
    remaining: int
    status: str  # scheduled | active | paused | sold_out | ended
    starts_at: datetime | None
    ends_at: datetime | None
    per_user_limit: int


SALE_COLUMNS = ("sale_id, product_id, quantity, price, starts_at, ends_at, per_user_limit,"
                " hold_seconds, status, held_qty, confirmed_qty, released_qty, expired_qty,"
                " last_stream_id, created_at, paused_at, room_rate, room_pass_seconds,"
                " room_margin_percent, room_stock_aware, buckets")

SaleAction = Literal["pause", "resume", "end"]
# What each action may start from (the checks themselves run in change_sale_state.lua).
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "pause": ("scheduled", "active", "sold_out"),
    "resume": ("paused",),
    "end": ("scheduled", "active", "paused", "sold_out"),
}


def check_buckets(buckets: int, quantity: int) -> None:
    """A sale's bucket count: 1 to MAX_BUCKETS, and at most one per unit."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValidationFailed.at("$.buckets", f"must be between 1 and {MAX_BUCKETS}")
    if buckets > quantity:
        raise ValidationFailed.at("$.buckets", "must be at most the quantity (every bucket "
                                  "starts with a unit at least)")


def room_of(sale: dict[str, Any]) -> RoomConfig | None:
    """The sale's waiting room as Postgres records it, or None."""
    if sale["room_rate"] is None:
        return None
    return RoomConfig(admission_rate=sale["room_rate"], pass_seconds=sale["room_pass_seconds"],
                      pass_margin_percent=sale["room_margin_percent"],
                      stock_aware=sale["room_stock_aware"])
