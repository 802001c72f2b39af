"""The purchase path's background work, run by every gateway process: resume checkouts
whose executor died, retry pending order tasks (refunds, flash units back on sale), and
empty carts a crash left full. Safe with many gateways: checkouts are taken by lease and
tasks with SKIP LOCKED, so each is worked on by one process at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.errors import as_unavailable
from orders.checkout import Checkout, RecoveryReport
from orders.tasks import OrderTasks, TaskReport

log = logging.getLogger("flashsale.orders")


class Upkeep:
    def __init__(self, *, checkout: Checkout, tasks: OrderTasks, interval: float = 5.0) -> None:
        self.checkout = checkout
        self.tasks = tasks
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def run_once(self) -> tuple[RecoveryReport, TaskReport]:
        recovered = await self.checkout.recover_incomplete()
        done = await self.tasks.run_due()
        if recovered.completed or recovered.failed or recovered.dropped:
            log.info("recovered checkouts: %s", recovered)
        return recovered, done

    def start(self) -> None:
        """Run at once (start-up recovery), then every ``interval`` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="orders-upkeep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.checkout.wait_idle()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # keep going: the next pass retries
                if as_unavailable(exc) is not None:
                    log.warning("orders upkeep waiting for its dependencies: %s", exc)
                else:
                    log.exception("orders upkeep failed")
            await asyncio.sleep(self.interval)
