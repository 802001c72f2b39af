"""The Redis key schema: the one place that spells key names.

All keys of a sale share the hash tag ``{s:<sale_id>}`` so every script touches a single
Redis Cluster slot. Scripts never build key names; they get them through KEYS from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

PREFIX = "fs"
ACTIVE_SALES = f"{PREFIX}:sales:active"  # set of sale ids the reconciler and sweeper watch
CONSUMER_GROUP = "reconciler"


def cart_key(user_id: int) -> str:
    return f"{PREFIX}:cart:{{u:{user_id}}}"


@dataclass(frozen=True, slots=True)
class SaleKeys:
    sale_id: int
    meta: str
    tokens: str
    buyers: str
    idem: str
    holds: str
    res: str
    seq: str
    events: str
    rate: str

    # Key lists in the order each script's header declares.
    @property
    def for_reserve(self) -> list[str]:
        return [self.meta, self.tokens, self.buyers, self.idem, self.holds, self.res,
                self.seq, self.events, self.rate]

    @property
    def for_release(self) -> list[str]:
        return [self.meta, self.tokens, self.buyers, self.holds, self.res, self.events]

    for_expire = for_release

    @property
    def for_confirm(self) -> list[str]:
        return [self.meta, self.holds, self.res, self.events]

    @property
    def for_load(self) -> list[str]:
        return [self.meta, self.tokens, self.events]

    @property
    def all(self) -> list[str]:
        return [self.meta, self.tokens, self.buyers, self.idem, self.holds, self.res,
                self.seq, self.events, self.rate]


@lru_cache(maxsize=4096)
def sale_keys(sale_id: int) -> SaleKeys:
    tag = f"{PREFIX}:{{s:{sale_id}}}"
    return SaleKeys(sale_id=sale_id, meta=f"{tag}:meta", tokens=f"{tag}:tokens",
                    buyers=f"{tag}:buyers", idem=f"{tag}:idem", holds=f"{tag}:holds",
                    res=f"{tag}:res", seq=f"{tag}:seq", events=f"{tag}:events",
                    rate=f"{tag}:rl")


def sale_of_reservation(reservation_id: str) -> int | None:
    """Reservation ids are ``<sale_id>-<sequence>``; None when it is not one of ours."""
    sale, sep, seq = reservation_id.partition("-")
    if not sep or not sale.isdigit() or not seq.isdigit() or len(sale) > 18:
        return None
    return int(sale)
