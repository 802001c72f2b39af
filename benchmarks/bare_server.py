"""The ceiling for the gateway benchmark: bare aiohttp + uvloop answering a JSON POST (or GET),
with the same server settings as the gateway (no access log, SO_REUSEPORT workers).

    python -m benchmarks.bare_server --port 8090 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal

import uvloop
from aiohttp import web

ANSWER = b'{"reservation_id":"1-1","sale_id":1,"quantity":1,"status":"held"}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, status=201, content_type="application/json")


def serve(port: int) -> None:
    uvloop.install()
    app = web.Application()
    app.router.add_post("/bare", answer)
    app.router.add_get("/bare", answer)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None,
                print=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            serve(args.port)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
