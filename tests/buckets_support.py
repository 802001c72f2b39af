"""Helpers of the bucket tests (tests/test_buckets*.py): load a sale split into buckets
straight through the scripts, read and check every bucket's books, run the 300-buyer
scenario."""

from __future__ import annotations

import asyncio
from collections import Counter

from engine.admission import Admission
from engine.buckets import all_keys, bucket_books, in_transit_records, shares
from engine.errors import PurchaseLimitExceeded, SoldOut
from engine.keys import units_by_buyer
from engine.scripts import SCRIPTS


async def load_buckets(client, sale: int, quantity: int, buckets: int, *, limit: int = 1,
                       hold_ms: int = 600_000) -> None:
    """A sale as engine/sales.py loads it: every bucket its share, bucket 0 last."""
    for keys in all_keys(sale, buckets):
        await client.delete(*keys.all)
    for bucket, share in reversed(list(enumerate(shares(quantity, buckets)))):
        keys = all_keys(sale, buckets)[bucket]
        answer = await SCRIPTS.load_tokens(client, keys.for_load, (
            1, "1.00", 0, 0, limit, hold_ms, share, share, 0, 0, "test", 0, buckets))
        assert answer[0] == b"ok", answer


async def bucket_report(client, sale: int, buckets: int) -> dict:
    """Every bucket's books checked (each balances by itself; counters agree with the
    reservation records and per-buyer counts); the sums, the units in transit by the
    counters and by the transfer records, and the units per buyer over all buckets."""
    total: Counter = Counter()
    per_user: Counter = Counter()
    homes: dict[int, set[int]] = {}
    for keys in all_keys(sale, buckets):
        books = await bucket_books(client, sale, keys.bucket)
        assert books is not None and books.balanced, books
        units: Counter = Counter()
        mine: Counter = Counter()
        for raw in (await client.hgetall(keys.res)).values():
            u, q, s, _x, _o = raw.split(b":", 4)
            units[s] += int(q)
            if s in (b"h", b"c"):
                mine[int(u)] += int(q)
                homes.setdefault(int(u), set()).add(keys.bucket)
        assert units[b"h"] == books.held and units[b"c"] == books.confirmed, (books, units)
        buyers = units_by_buyer(await client.hgetall(keys.buyers))
        assert buyers == dict(mine), (keys.bucket, buyers, mine)
        per_user.update(mine)
        for name in ("initial", "tokens", "held", "confirmed"):
            total[name] += getattr(books, name)
        total["in_transit"] += books.moved_out - books.moved_in
    assert all(len(b) == 1 for b in homes.values()), "a buyer with units in two buckets"
    return {**total, "recorded_in_transit": await in_transit_records(client, sale, buckets),
            "per_user": per_user}


# 300 buyers, homed unevenly over 3 buckets (user mod 3): 200 in bucket 0, 100 in bucket 1,
# none in bucket 2, so that bucket's units reach buyers only by moving to another bucket.
BUYERS = [3 * i for i in range(1, 201)] + [3 * i + 1 for i in range(1, 101)]


async def three_hundred_buyers(workers: list[Admission], sale: int) -> list[list[str]]:
    """300 buyers (BUYERS) x 3 attempts, each on a worker of its own turn; the ids each
    got."""
    async def buyer(user: int) -> list[str]:
        got = []
        for attempt in range(3):
            try:
                hold = await workers[(user + attempt) % len(workers)].reserve(
                    sale, user, 1, f"a{attempt}")
                got.append(hold.reservation_id)
            except (SoldOut, PurchaseLimitExceeded):
                pass
        return got

    return list(await asyncio.gather(*(buyer(u) for u in BUYERS)))
