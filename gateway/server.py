"""Run the gateway: one process, or N worker processes sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys

import uvloop
from aiohttp import web

from engine.errors import Misconfigured
from engine.settings import Settings
from gateway.app import create_app

log = logging.getLogger("flashsale.gateway")


def _serve_one(settings: Settings, host: str, port: int, reuse_port: bool,
               listening: str) -> None:
    uvloop.install()
    if settings.uses_dev_secret:
        log.warning("FLASHSALE_SECRET is the development default; set it in production")
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)  # after the services are built (cleanup_ctx)
    try:
        # run_app calls `print` once its sockets are bound: "listening" is never a lie.
        web.run_app(app, host=host, port=port, reuse_port=reuse_port,
                    access_log=None, print=lambda _banner: log.info("%s", listening),
                    handle_signals=True, shutdown_timeout=5)
    except OSError as exc:  # lost a race for the port after the start-up check
        raise Misconfigured(f"cannot serve the gateway on {host}:{port}: "
                            f"{exc.strerror or exc}") from exc


async def _freeze_heap(app: web.Application) -> None:
    """Move everything built at start-up (modules, routes, services, caches) out of the
    collector's sight: full collections then scan only what requests allocate, so their
    pauses stay short under load (gc.freeze)."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    if workers <= 1:
        _serve_one(settings, host, port, reuse_port=False,
                   listening=f"gateway listening on http://{host}:{port}")
        return
    # Fork before any event loop exists; each child binds its own SO_REUSEPORT socket and
    # the kernel spreads connections across them.
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve_one(settings, host, port, reuse_port=True,
                           listening=f"gateway worker {os.getpid()} listening on "
                                     f"http://{host}:{port}")
            except Misconfigured as exc:
                log.error("%s", exc.message)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    sys.exit(max(status, 0))
