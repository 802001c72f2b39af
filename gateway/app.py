"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from engine import metrics
from engine.codec import encode, error_document
from engine.connections import (
    ClusterModeChanged,
    close_pool,
    confirm_cluster_mode,
    create_pool,
    open_redis,
    probe_all,
    redis_state,
)
from engine.errors import Unavailable
from engine.settings import Settings
from gateway import api
from gateway.context import SERVICES, SETTINGS, build_services
from gateway.hot import HOT_ROUTES, HotRoutes
from gateway.middleware import Edge, install_parser_errors
from gateway.openapi import build_openapi
from gateway.pages import add_pages
from gateway.routes import ROUTE_TABLES


def create_app(settings: Settings) -> web.Application:
    install_parser_errors()
    app = web.Application(client_max_size=settings.max_body_bytes,
                          # Long query strings reach the handlers (which answer 422 in
                          # the error contract) instead of aiohttp's plain-text 400.
                          handler_args={"max_line_size": 32 * 1024})
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)

    routes = [r for table in ROUTE_TABLES for r in table.routes]
    verify = _Verifier(app)
    limits = api.BodyLimits(max_bytes=settings.max_body_bytes, timeout=settings.body_timeout,
                            per_client=settings.body_reads_per_client)
    edge = Edge(app.router, access_log=settings.access_log)
    hot = HotRoutes()
    for route in routes:
        wrapped = edge.add(route.method, route.path, api.bind(route, verify=verify,
                                                              limits=limits))
        if route.hot and settings.hot_lane:
            hot.add(route.method, route.path, wrapped)
    app[HOT_ROUTES] = hot
    openapi = encode(build_openapi(routes))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    edge.add("GET", "/api/v1/openapi.json", openapi_json, head=True)
    edge.add("GET", "/healthz", healthz, head=True)
    edge.add("GET", "/readyz", readyz, head=True)
    edge.add("GET", "/metrics", metrics_text, head=True)
    add_pages(edge)
    edge.finish()
    return app


class _Verifier:
    """The bearer check of every authenticated route (gateway.api.Verify): the signature
    cached per token and the account's standing cached for seconds, so most requests
    are answered by ``cached`` without a coroutine; revocation and expiry are checked on
    every use all the same (accounts/tokens.py, accounts/standing.py)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def cached(self, header: str | None):
        svc = self._app[SERVICES]
        return svc.standings.authorize_cached(svc.signer.from_header(header))

    async def __call__(self, header: str | None):
        svc = self._app[SERVICES]
        return await svc.standings.authorize(svc.signer.from_header(header))


# Fails with ClusterModeChanged when the process must start again to talk to Redis as it
# is (engine.connections.confirm_cluster_mode); gateway/server.py serves until it does.
RESTART = web.AppKey("restart", asyncio.Future)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = await open_redis(settings)
    pool = await create_pool(settings)
    app[SERVICES] = build_services(settings, redis, pool)
    await app[SERVICES].start()
    restart = app[RESTART] = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(_refresh_readiness(app[SERVICES]), name="readiness"),
             asyncio.create_task(_watch_cluster_mode(settings, redis, restart),
                                 name="cluster-mode")]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app[SERVICES].stop()
        await redis.aclose()
        await close_pool(pool)


async def _watch_cluster_mode(settings: Settings, redis, restart: asyncio.Future) -> None:
    try:
        await confirm_cluster_mode(settings, redis)
    except ClusterModeChanged as exc:
        restart.set_exception(exc)
        restart.exception()  # read here: an app under a test server has no one waiting


async def healthz(request: web.Request) -> web.Response:
    return api.json_response({"status": "ok"})


READINESS_EVERY = 5.0  # seconds between the probes that keep flashsale_dependency_up current


async def _refresh_readiness(svc) -> None:
    while True:
        await check_dependencies(svc)
        await asyncio.sleep(READINESS_EVERY)


async def readyz(request: web.Request) -> web.Response:
    checks = await check_dependencies(request.app[SERVICES])
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return api.json_response({"status": "ready", "checks": checks})
    return api.json_response(
        error_document(Unavailable.code, "A backing service is unavailable.", checks), 503,
        {"Retry-After": "1"})


async def check_dependencies(svc) -> dict[str, str]:
    """Probe Redis and Postgres; set flashsale_dependency_up; "ok" or "unavailable" each
    (on a Redis Cluster also "cluster": its state, ready only when "ok")."""
    checks = {}

    async def redis_probe() -> None:
        state = await redis_state(svc.redis, svc.settings.redis_url)
        if state.get("cluster", "ok") != "ok":
            checks["cluster"] = state["cluster"]
            raise ConnectionError("the Redis Cluster is not ok")
        checks.update(state)

    # Any failure means not ready; the reason is in the logs of the dependency.
    answered = await probe_all({"redis": redis_probe,
                                "postgres": lambda: svc.pool.fetchval("SELECT 1")},
                               svc.settings.dependency_timeout)
    for name, up in answered.items():
        checks[name] = "ok" if up else "unavailable"
        metrics.DEPENDENCY_UP.labels(name).set(1 if up else 0)
    return checks


async def metrics_text(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})
