"""The reconciler process: consumer + sweeper + a small HTTP server for /metrics,
/healthz and /readyz. SIGTERM finishes the batch in hand, acknowledges it and exits 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from engine.codec import error_document
from engine.connections import (
    close_pool,
    confirm_cluster_mode,
    create_pool,
    open_redis,
    probe_all,
    redis_state,
)
from engine.errors import Unavailable
from engine.metrics import DEPENDENCY_UP, exposition
from engine.settings import Settings
from reconciler.consumer import Consumer
from reconciler.metrics import RECONCILER
from reconciler.sweeper import Sweeper

log = logging.getLogger("flashsale.reconciler")


async def _redis_ready(redis, url: str) -> None:
    """Redis answers (on a cluster: every master, and the cluster says ok)."""
    if (await redis_state(redis, url)).get("cluster", "ok") != "ok":
        raise ConnectionError("the Redis Cluster is not ok")


async def _refresh_readiness(consumer: Consumer, settings: Settings, every: float = 2.0
                             ) -> None:
    """Keep flashsale_dependency_up current whether or not anyone calls /readyz: probe
    each dependency every few seconds (an idle consumer would not notice an outage)."""
    while not consumer.stopping.is_set():
        # Any failure means down; the consumer logs the cause.
        up = await probe_all({"redis": lambda: _redis_ready(consumer.redis,
                                                            settings.redis_url),
                              "postgres": lambda: consumer.pool.fetchval("SELECT 1")},
                             settings.dependency_timeout)
        DEPENDENCY_UP.labels("redis").set(int(up["redis"] and consumer.redis_ok))
        DEPENDENCY_UP.labels("postgres").set(int(up["postgres"] and consumer.postgres_ok))
        try:
            await asyncio.wait_for(consumer.stopping.wait(), every)
        except TimeoutError:
            pass


def _status_app(consumer: Consumer) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = {"redis": "ok" if consumer.redis_ok else "unavailable",
                  "postgres": "ok" if consumer.postgres_ok else "unavailable"}
        if consumer.redis_ok and consumer.postgres_ok:
            return web.json_response({"status": "ready", "checks": checks})
        return web.json_response(
            error_document(Unavailable.code, "A backing service is unavailable.", checks),
            status=503, headers={"Retry-After": "1"})

    async def metrics_text(_: web.Request) -> web.Response:
        body, content_type = exposition(RECONCILER)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app


async def run_reconciler(settings: Settings, *, metrics_port: int | None = None,
                         consumer_name: str | None = None) -> None:
    redis = await open_redis(settings)
    pool = await create_pool(settings, min_size=0, max_size=4)
    consumer = Consumer(redis=redis, pool=pool, settings=settings, name=consumer_name)
    sweeper = Sweeper(redis=redis, pool=pool, interval=settings.sweep_interval,
                      stopping=consumer.stopping)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stopping.set)

    runner = None
    if metrics_port:
        runner = web.AppRunner(_status_app(consumer), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.host, metrics_port).start()
    log.info("reconciler %s started%s", consumer.name,
             f"; metrics on http://{settings.host}:{metrics_port}/metrics" if metrics_port else "")
    started = time.monotonic()
    tasks = [asyncio.create_task(consumer.run(), name="consumer"),
             asyncio.create_task(sweeper.run(), name="sweeper"),
             asyncio.create_task(_refresh_readiness(consumer, settings), name="readiness"),
             # Ends quietly once Redis confirms the client's kind; else raises
             # ClusterModeChanged, on which the command starts the process again.
             asyncio.create_task(confirm_cluster_mode(settings, redis), name="cluster-mode")]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        consumer.stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        await close_pool(pool)
        await redis.aclose()
        log.info("reconciler %s stopped after %.0f s", consumer.name, time.monotonic() - started)
