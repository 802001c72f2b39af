"""The hot lane: the reservation endpoint answered without aiohttp's per-request machinery.

A reservation costs aiohttp about as much as it costs us: waking the connection's task,
a task per request, a ``Request``, the router, a ``StreamWriter``, preparing a response
and formatting its headers (README: "The hot lane"). For the routes marked ``hot`` this
connection class keeps aiohttp's parser (the same limits and refusals) and its
connection handling (keep-alive, shutdown, errors), but answers the request itself:
the route's own bound handler (auth, body, the error contract, metrics; gateway/api.py
and gateway/middleware.py) is called with a small ``HotRequest``, and the answer is
written as bytes.

A request takes the lane only when it is the whole story: the connection is idle in
aiohttp's loop, the data holds exactly one complete HTTP/1.1 request, its path is plain
(no escapes, dots or query) and names a hot route, and it has no upgrade, compression or
``Expect``. Anything else goes to aiohttp unchanged, so the lane can only be faster,
never different. What arrives while a lane request is being answered is held unparsed
and handled after its answer is written, so pipelined requests are answered in order.
``FLASHSALE_HOT_LANE=0`` turns the lane off.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from engine import metrics

Handler = Callable[[Any], Awaitable[web.StreamResponse]]

# Segment values the lane accepts: what percent-decoding and dot-segment removal leave
# unchanged, so the lane's match is the router's.
_SEGMENT = r"[A-Za-z0-9_~-]{1,64}"
_ANSWERED = metrics.CounterTally(metrics.HOT_LANE_REQUESTS)  # one per process, as the series


class HotRoutes:
    """The routes the lane answers: method, path template and the handler aiohttp's
    router would call for them (the same wrapped function)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        pattern = re.sub(r"\\{(\w+)\\}", lambda m: f"(?P<{m.group(1)}>{_SEGMENT})",
                         re.escape(path))
        labels = (path,)
        answered = _ANSWERED

        def counted(request: Any) -> Awaitable[web.StreamResponse]:
            answered.inc(labels)
            return handler(request)

        self._routes.append((method, re.compile(pattern), counted))

    def __bool__(self) -> bool:
        return bool(self._routes)

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The route's handler and path values; a route's pattern allows only plain
        segments (``_SEGMENT``), so what it matches is what the router would match."""
        for route_method, pattern, handler in self._routes:
            if route_method == method:
                found = pattern.fullmatch(path)
                if found is not None:
                    return handler, found.groupdict()
        return None


class HotRequest:
    """What a hot route's handler may use of a request: the part of ``web.Request`` that
    gateway/api.py, gateway/middleware.py and the hot handlers read (tests run every
    route through the lane, so a handler reaching past this fails there)."""

    __slots__ = (
        "_state",
        "app",
        "content",
        "headers",
        "match_info",
        "method",
        "path",
        "remote",
    )

    def __init__(self, app: web.Application, message: Any, payload: Any,
                 match_info: dict[str, str], remote: str | None) -> None:
        self.app = app
        self.method = message.method
        self.path = message.path
        self.headers = message.headers
        self.match_info = match_info
        self.remote = remote
        self.content = payload
        self._state: dict[Any, Any] = {}

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        return None if raw is None else int(raw)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_HEADS: dict[tuple, bytes] = {}  # status line and fixed headers, per status and headers
_SKIPPED = frozenset(("content-length", "date", "server", "connection"))


def _head(status: int, reason: str, headers: tuple[tuple[str, str], ...], close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, '')}"]
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} holds a line break")
        if name.lower() not in _SKIPPED:
            lines.append(f"{name}: {value}")
    lines.append(f"Server: {SERVER_SOFTWARE}")
    if close:
        lines.append("Connection: close")
    lines.append("Content-Length: ")
    return "\r\n".join(lines).encode("latin-1")


def response_bytes(response: web.Response, close: bool) -> bytes:
    """``response`` as HTTP/1.1 bytes, with the headers aiohttp would add."""
    body = response.body or b""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("the hot lane writes byte bodies only")
    key = (response.status, response.reason, tuple(response.headers.items()), close)
    head = _HEADS.get(key)
    if head is None:
        head = _head(*key)
        if len(_HEADS) < 256:  # a few statuses and headers; an X-Request-ID is per request
            _HEADS[key] = head
    return b"%s%d\r\nDate: %s\r\n\r\n%s" % (head, len(body), _date(), body)


def _date() -> bytes:
    """The Date header's value, made once a second."""
    global _DATE
    now = int(time.time())
    if _DATE[0] != now:
        _DATE = (now, rfc822_formatted_time().encode("latin-1"))
    return _DATE[1]


_DATE: tuple[int, bytes] = (0, b"")


class HotConnection(RequestHandler):
    """aiohttp's connection protocol, answering hot routes itself (module docstring)."""

    __slots__ = ("_answering", "_app", "_busy", "_held", "_hot", "_next", "_remote")

    def __init__(self, manager: HotServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._hot = manager.hot
        self._app = manager.app
        self._busy = False  # a lane request is being answered
        self._answering: asyncio.Task[None] | None = None  # the lane task (_lane)
        self._next: asyncio.Future[Any] | None = None  # what it waits on, between answers
        self._held = bytearray()  # what arrived meanwhile, not yet parsed
        self._remote: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, (list, tuple)) else (
            str(peer) if peer else None)

    def data_received(self, data: bytes) -> None:
        if self._busy:
            # Behind a lane request: held unparsed, so nothing (aiohttp included) can
            # answer it before that request's answer is written.
            self._held += data
            if len(self._held) >= self._read_bufsize and not self._buffer_paused:
                self._pause_reading_for_buffer()
            return
        waiter = self._waiter
        # aiohttp's loop holds no request: it waits for one, or has not started yet.
        idle = not self._messages and (
            self._request_count == 0 or (waiter is not None and not waiter.done()))
        if (not idle or self._force_close or self._close or self._upgraded
                or self._payload_parser is not None):
            super().data_received(data)
            return
        self._waiter = None  # parse without waking aiohttp's loop
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        messages = self._messages
        if len(messages) == 1 and not (self._force_close or self._close or self._upgraded):
            message, payload = messages[0]
            target = self._target(message, payload)
            if target is not None:
                messages.popleft()
                if self._parser is not None:
                    self._parser.message_consumed()
                self._take((message, payload, *target))
                return
        if waiter is None or waiter.done():
            return  # aiohttp's loop finds the queue when it starts
        if self._force_close or self._close:
            waiter.cancel()  # as close() would have, had the waiter been in place
        elif messages:
            waiter.set_result(None)

    def _target(self, message: Any, payload: Any) -> tuple[Handler, dict[str, str]] | None:
        if (isinstance(message, _ErrInfo)  # the parser refused it: aiohttp answers 400
                or message.version != (1, 1) or message.upgrade or message.compression
                or message.chunked or not payload.is_eof() or "Expect" in message.headers):
            return None
        return self._hot.match(message.method, message.path)

    def _take(self, job: tuple[Any, Any, Handler, dict[str, str]]) -> None:
        """Answer ``job`` (message, payload, handler, match info) in the lane task: the
        one waiting for the connection's next lane request, else a new one."""
        self._busy = self._request_in_progress = True
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.done():
            waiting.set_result(job)
        else:
            self._answering = self._loop.create_task(self._lane(job))

    async def _lane(self, job: tuple[Any, Any, Handler, dict[str, str]] | None) -> None:
        """The connection's lane answers, one at a time, in one task that then waits for
        the next: a task per connection, not per request (making a task, its entry in
        asyncio's WeakSet of tasks included, was 5,000 of a reservation's 210,000
        instructions under callgrind). It ends when the connection does."""
        try:
            while job is not None:
                message, payload, handler, match_info = job
                if self._manager is not None:
                    self._manager.requests_count += 1
                close = True
                try:
                    response = await handler(HotRequest(self._app, message, payload,
                                                        match_info, self._remote))
                    close = message.should_close or response.keep_alive is False
                    raw = response_bytes(response, close)
                    transport = self.transport
                    if transport is not None and not transport.is_closing():
                        transport.write(raw)
                        if not close and self._paused:  # the client reads slower than it sends
                            await self._drain_helper()
                except ConnectionError:
                    pass
                except Exception:
                    self.log_exception("Error answering a hot-lane request")
                finally:
                    self._busy = self._request_in_progress = False
                    waiter = self._handler_waiter
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)  # a graceful shutdown waits for it
                following = self._done(close)
                if following is None:
                    return
                # Nothing of this request stays referenced while the connection idles.
                job = message = payload = handler = match_info = response = raw = None
                job = await following  # done already when a held request took the lane
        finally:
            self._answering = self._next = None

    def _done(self, close: bool) -> asyncio.Future[Any] | None:
        """After a lane answer: close as it said (None), or go on with what arrived
        meanwhile; the future on which the lane task waits for the next lane request
        (None when the connection closes)."""
        held, self._held = bytes(self._held), bytearray()
        if close or self._force_close or self._close or self.transport is None:
            self.force_close()  # the transport still sends what was written
            return None
        loop = self._loop
        self._next_keepalive_close_time = loop.time() + self._keepalive_timeout
        following = self._next = loop.create_future()
        if self._buffer_paused and not self._messages:
            self._resume_reading_for_buffer()
        if held:
            self.data_received(held)
        return following

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)  # the lane task ends


class HotServer(web.Server):
    """aiohttp's server, making ``HotConnection`` protocols."""

    hot: HotRoutes
    app: web.Application

    def __call__(self) -> RequestHandler:
        return HotConnection(self, loop=self._loop, **self._kwargs)


HOT_ROUTES = web.AppKey("hot_routes", HotRoutes)


class HotAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers the app's hot routes in the lane (the
    app's ``HOT_ROUTES``; none, or none registered: plain aiohttp)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        hot = self.app.get(HOT_ROUTES)
        if hot:
            # aiohttp builds its Server inside Application._make_handler with no way to
            # name the class: the built one is given the lane's protocol factory.
            server.__class__ = HotServer
            server.hot, server.app = hot, self.app  # type: ignore[attr-defined]
        return server
