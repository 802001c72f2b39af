"""Thousands of buyers through a sale's waiting room, over HTTP: how long until the last
one knows the sale is over? (The demo and benchmarks/waiting_room.py run it on a
stock-aware room and on a rate-only room, one after the other in the same run.)

Each buyer joins at once, then looks at its ticket every ``poll`` seconds (pages poll out
of phase); once admitted it reserves with its pass at once and pays at once (``pay``); it
is done when it bought, or when told ``sold_out``: by the room, or by a 409 on reserving.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

# pay(reservation_id, user_id, headers) -> paid?
Pay = Callable[[str, int, dict], Awaitable[bool]]


async def learn_sold_out(http: aiohttp.ClientSession, base: str, sale_id: int,
                         buyers: list[tuple[int, dict]], *, poll: float, pay: Pay,
                         seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    url = f"{base}/api/v1/sales/{sale_id}"
    learned: list[float] = []
    counts = {"bought": 0, "unpaid": 0, "passes": 0, "errors": 0}
    opened = time.perf_counter()

    async def knew() -> None:
        learned.append(time.perf_counter() - opened)

    async def buyer(user_id: int, headers: dict, phase: float) -> None:
        async with http.post(f"{url}/queue", headers=headers) as resp:
            ticket = await resp.json()
            if resp.status >= 300:
                counts["errors"] += 1
                return
        await asyncio.sleep(phase)
        while ticket["status"] == "waiting":
            await asyncio.sleep(poll)
            async with http.get(f"{url}/queue", headers=headers) as resp:
                if resp.status >= 300:
                    counts["errors"] += 1
                    continue
                ticket = await resp.json()
        if ticket["status"] != "admitted":  # sold_out (expired cannot happen this fast)
            await knew()
            return
        counts["passes"] += 1
        body = {"quantity": 1, "idempotency_key": f"room-{sale_id}",
                "queue_pass": ticket["pass"]}
        async with http.post(f"{url}/reservations", json=body, headers=headers) as resp:
            answer = await resp.json()
            status = resp.status
        if status in (200, 201):
            paid = await pay(answer["reservation_id"], user_id, headers)
            counts["bought" if paid else "unpaid"] += 1
        elif status == 409 and answer["error"]["code"] == "sold_out":
            await knew()
        else:
            counts["errors"] += 1

    await asyncio.gather(*(buyer(u, h, rng.uniform(0, poll)) for u, h in buyers))
    ordered = sorted(learned)
    return {"buyers": len(buyers), **counts, "told_sold_out": len(ordered),
            "passes_for_nothing": counts["passes"] - counts["bought"],
            "median_knew_s": round(ordered[len(ordered) // 2], 2) if ordered else None,
            "last_knew_s": round(ordered[-1], 2) if ordered else None}
