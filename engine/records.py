"""The reservation record: the value of a sale's ``res`` hash, one format for the Lua
scripts (lua/prelude.lua's ``parse_record`` / ``format_record``) and for Python (the
reservation read, the audit, the recovery that rebuilds a sale from Postgres):

    "<user_id>:<quantity>:<state>:<expires_ms>:<order_id>"

``state`` is one letter (h held, c confirmed, r released, e expired); ``order_id`` is
empty until the hold is confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["held", "confirmed", "released", "expired"]
STATE_OF: dict[bytes, State] = {b"h": "held", b"c": "confirmed", b"r": "released",
                                b"e": "expired"}
LETTER_OF: dict[str, str] = {name: letter.decode() for letter, name in STATE_OF.items()}


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    user_id: int
    quantity: int
    state: State
    expires_ms: int
    order_id: int | None

    @classmethod
    def parse(cls, raw: bytes) -> ReservationRecord:
        user, qty, state, expires, order = raw.split(b":", 4)
        return cls(user_id=int(user), quantity=int(qty), state=STATE_OF[state],
                   expires_ms=int(expires), order_id=int(order) if order else None)

    def format(self) -> str:
        return (f"{self.user_id}:{self.quantity}:{LETTER_OF[self.state]}:{self.expires_ms}:"
                f"{self.order_id if self.order_id is not None else ''}")
