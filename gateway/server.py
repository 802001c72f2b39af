"""Run the gateway: one process, or N supervised worker processes sharing the port
(SO_REUSEPORT).

With ``--workers N`` the parent only supervises: a worker that dies (SIGKILL, OOM, a crash)
is replaced after a backoff (0.1 s, doubling while replacements keep dying within 10 s of
starting, at most 5 s), logged and counted in ``flashsale_gateway_worker_restarts``. Each
worker asks the kernel for SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a killed
parent never leaves orphans serving the port. SIGTERM or SIGINT to the parent is passed to
the workers, which finish their requests and exit; then the parent exits. A worker that
must start again to talk to Redis as it is (ClusterModeChanged) finishes its requests,
exits with 75 and is replaced at once; one process alone is started again in place by
``flashsale serve``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import time

import uvloop
from aiohttp import web

from engine.connections import ClusterModeChanged
from engine.errors import Misconfigured
from engine.settings import Settings
from gateway.app import RESTART, create_app
from gateway.hot import HotAppRunner

log = logging.getLogger("flashsale.gateway")

_PR_SET_PDEATHSIG = 1
_STABLE_SECONDS = 10.0  # a worker that lived this long resets its slot's backoff
_FIRST_DELAY, _MOST_DELAY = 0.1, 5.0
_EX_CONFIG = 78  # a worker that cannot serve (the port): replacing it cannot help
_EX_RESTART = 75  # a worker that must start again (ClusterModeChanged): replaced at once


def _serve_one(settings: Settings, host: str, port: int, reuse_port: bool,
               listening: str) -> None:
    if settings.uses_dev_secret:
        log.warning("FLASHSALE_SECRET is the development default; set it in production")
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)  # after the services are built (cleanup_ctx)
    try:
        uvloop.run(_run(app, host, port, reuse_port, listening))
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    except OSError as exc:  # lost a race for the port after the start-up check
        raise Misconfigured(f"cannot serve the gateway on {host}:{port}: "
                            f"{exc.strerror or exc}") from exc


async def _run(app: web.Application, host: str, port: int, reuse_port: bool,
               listening: str) -> None:
    """What ``web.run_app`` does, with the hot lane's runner (gateway/hot.py): SIGINT and
    SIGTERM end it (GracefulExit), requests in flight get 5 s to finish. So does the app's
    RESTART, raising ClusterModeChanged: the caller starts the process again."""
    runner = HotAppRunner(app, access_log=None, handle_signals=True, shutdown_timeout=5,
                          keepalive_timeout=75)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        log.info("%s", listening)  # once the socket is bound: "listening" is never a lie
        await app[RESTART]
    finally:
        await runner.cleanup()


async def _freeze_heap(app: web.Application) -> None:
    """Move everything built at start-up (modules, routes, services, caches) out of the
    collector's sight: full collections then scan only what requests allocate, so their
    pauses stay short under load (gc.freeze)."""
    gc.collect()
    gc.freeze()


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM this process when its parent dies; exit at once when the
    parent is already gone (it died between fork and here)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    else:  # not Linux/glibc: nothing asks the kernel; the parent check below still holds
        log.warning("no libc prctl: workers will not follow a killed parent")
    if os.getppid() != parent:
        os._exit(0)


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings, self.host, self.port, self.workers = settings, host, port, workers
        self.children: dict[int, int] = {}  # pid -> slot
        self.started_at: dict[int, float] = {}  # slot -> when its worker started
        self.delay: dict[int, float] = {}  # slot -> next restart delay
        self.stopping = False
        self.restarts = 0

    def _spawn(self, slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                die_with_parent(parent)
                _serve_one(self.settings, self.host, self.port, reuse_port=True,
                           listening=f"gateway worker {os.getpid()} listening on "
                                     f"http://{self.host}:{self.port}")
            except Misconfigured as exc:
                log.error("%s", exc.message)
                code = _EX_CONFIG
            except ClusterModeChanged as exc:
                log.warning("%s: gateway worker %d starts again", exc, os.getpid())
                code = _EX_RESTART
            except BaseException:
                log.exception("gateway worker failed")
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = slot
        self.started_at[slot] = time.monotonic()

    def _forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for child in list(self.children):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        # Fork before any event loop exists; each child binds its own SO_REUSEPORT socket
        # and the kernel spreads connections across them.
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for slot in range(self.workers):
            self._spawn(slot)
        status = 0
        while self.children:
            try:
                pid, code = os.wait()  # EINTR (a forwarded signal) is retried by Python
            except ChildProcessError:
                break
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            _mark_dead(pid)
            exit_code = os.waitstatus_to_exitcode(code)
            if exit_code == _EX_CONFIG and not self.stopping:
                log.error("gateway worker %d cannot serve; stopping the others", pid)
                self._forward(signal.SIGTERM, None)
                status = 1
            if self.stopping:
                status = status or min(max(exit_code, 0), 1)
                continue
            self._replace(slot, pid, exit_code)
        return status

    def _replace(self, slot: int, pid: int, exit_code: int) -> None:
        lived = time.monotonic() - self.started_at.get(slot, 0.0)
        delay = _FIRST_DELAY if lived >= _STABLE_SECONDS or exit_code == _EX_RESTART else min(
            _MOST_DELAY, max(_FIRST_DELAY, self.delay.get(slot, 0.0) * 2))
        self.delay[slot] = delay
        if exit_code != _EX_RESTART:  # a worker starting again has said why
            how = f"signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
            log.warning("gateway worker %d died (%s) after %.1f s; replacing it in %.1f s",
                        pid, how, lived, delay)
        time.sleep(delay)  # a SIGTERM meanwhile runs _forward; sleep resumes (PEP 475)
        if self.stopping:
            return
        self._spawn(slot)
        self.restarts += 1
        _count_restart()


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def _count_restart() -> None:
    from engine import metrics
    metrics.WORKER_RESTARTS.inc()


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    if workers <= 1:
        _serve_one(settings, host, port, reuse_port=False,
                   listening=f"gateway listening on http://{host}:{port}")
        return
    sys.exit(Supervisor(settings, host, port, workers).run())
