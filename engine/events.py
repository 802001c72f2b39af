"""Sale stream events, as the Lua scripts write them and the reconciler reads them."""

from __future__ import annotations

from typing import Literal

import msgspec

from engine.codec import text

EventType = Literal["reserved", "released", "confirmed", "expired", "loaded"]


class SaleEvent(msgspec.Struct, frozen=True):
    """One entry of ``fs:{s:<id>}:events`` (or of bucket b's ``fs:{s:<id>:<b>}:events``).
    Field names follow the stream's short keys."""

    stream_id: str
    sale_id: int
    type: EventType
    reservation_id: str = ""
    user_id: int = 0
    quantity: int = 0
    at_ms: int = 0
    expires_ms: int = 0
    order_id: int | None = None
    idempotency_key: str | None = None
    from_state: str | None = None  # released: "h" (a hold) or "c" (a confirmed unit)
    bucket: int = 0  # the sale's bucket whose stream holds the entry (engine/buckets.py)

    @classmethod
    def from_stream(cls, sale_id: int, stream_id: bytes | str,
                    fields: dict[bytes, bytes], bucket: int = 0) -> SaleEvent:
        get = fields.get
        order = get(b"o")
        expires = get(b"x")
        key = get(b"k")
        origin = get(b"f")
        return cls(
            stream_id=text(stream_id),
            sale_id=sale_id,
            type=get(b"t", b"").decode(),
            reservation_id=get(b"r", b"").decode(),
            user_id=int(get(b"u") or 0),
            quantity=int(get(b"q") or 0),
            at_ms=int(get(b"ts") or 0),
            expires_ms=int(expires) if expires else 0,
            order_id=int(order) if order else None,
            idempotency_key=key.decode() if key is not None else None,
            from_state=origin.decode() if origin is not None else None,
            bucket=bucket,
        )
