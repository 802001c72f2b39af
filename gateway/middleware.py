"""The edge of every route: the error contract, metrics and request ids in one place.

Every 4xx/5xx leaves here as ``{"error": {"code", "message", "details"}}``. Driver
outages become 503 with Retry-After; anything unexpected is logged with a request id and
answered 500 without a stack trace. With ``FLASHSALE_ACCESS_LOG=1`` each request is one
line on the ``flashsale.access`` logger: request id, method, route template, status and
latency; never a path parameter, query string, header or body, so no token can leak.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web, web_protocol

from engine import metrics
from engine.codec import error_document
from engine.errors import (
    FlashsaleError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    as_contention,
    as_unavailable,
)
from gateway.api import json_response

log = logging.getLogger("flashsale.gateway")
access = logging.getLogger("flashsale.access")
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# aiohttp's own errors (no route, wrong method, body too large) in the contract's words;
# the codes and messages that engine.errors has are taken from there.
_HTTP_CODES = {
    400: ("bad_request", "The request is malformed."),
    408: ("request_timeout", "The request came too slowly."),
    **{e.status: (e.code, e.message)
       for e in (Unauthorized, Forbidden, NotFound, MethodNotAllowed, PayloadTooLarge)},
    415: ("unsupported_media_type", "Send JSON."),
    431: ("headers_too_large", "The request headers are too large."),
    500: ("internal_error", "Something went wrong on our side."),
    501: ("not_implemented", "This method is not supported."),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _parser_error_as_json(self: web_protocol.RequestHandler, request: web.BaseRequest,
                          status: int = 500, exc: BaseException | None = None,
                          message: str | None = None) -> web.StreamResponse:
    """aiohttp answers what its HTTP parser refuses (a request line or header too long, a
    method that is no token, a broken chunk) before any middleware runs, in text/plain;
    this answers the same status in the contract's shape. aiohttp offers no hook for it,
    so ``install_parser_errors`` puts this in place of ``RequestHandler.handle_error``.
    A malformed request is the client's doing: logged at debug, by type only (the parser's
    message quotes the raw header, which may be a token)."""
    if status >= 500:
        log.error("error serving a request from %s: %s", request.remote, type(exc).__name__)
    else:
        log.debug("refused a malformed request from %s: %s", request.remote,
                  type(exc).__name__)
    if request.writer.output_size > 0:  # as aiohttp: a response is under way already
        raise ConnectionError("a response was being sent; cannot send an error")
    code, text = _HTTP_CODES.get(status, ("http_error", "The request could not be served."))
    response = json_response(error_document(code, text), status)
    response.force_close()
    return response


def install_parser_errors() -> None:
    web_protocol.RequestHandler.handle_error = _parser_error_as_json  # type: ignore[method-assign]


def error_response(exc: FlashsaleError) -> web.Response:
    headers = None
    if isinstance(exc, (RateLimited, Unavailable)):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    response = json_response(error_document(exc.code, exc.message, exc.details), exc.status,
                             headers)
    if exc.close_connection:
        response.force_close()
    return response


class _Children:
    """The request counter and duration histogram, counted in plain ints between scrapes
    (engine.metrics tallies): no lock or label lookup per request."""

    def __init__(self) -> None:
        self.requests = metrics.CounterTally(metrics.HTTP_REQUESTS)
        self.durations = metrics.HistogramTally(metrics.HTTP_DURATION, metrics.LATENCY_BUCKETS)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc((route, method, _STATUS.get(status) or str(status)))
        self.durations.observe((route,), seconds)


_STATUS = {code: str(code) for code in range(100, 600)}
_CHILDREN = _Children()  # one per process, as the series are


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-ID when it is a plain short token, else a fresh one (a
    header is never echoed into logs unchecked)."""
    given = request.headers.get("X-Request-ID", "")
    return given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class Edge:
    """The edge of every route, put around each handler when it is registered rather than
    as an aiohttp middleware: a middleware costs every request two more coroutine levels
    on the way in and again when it resumes after Redis (about 15,000 instructions of a
    reservation's 340,000, measured with callgrind). Paths and methods no route answers
    reach one catch-all registered last (``finish``), which asks a copy of the routes
    whether the path is known under other methods: 405 with Allow, else 404, as aiohttp's
    router would have said, in the contract's shape."""

    def __init__(self, router: web.UrlDispatcher, *, access_log: bool = False) -> None:
        self._router = router
        self._access_log = access_log

    def add(self, method: str, path: str, handler: Handler, *, head: bool = False) -> Handler:
        """Register ``handler`` for ``method`` (and HEAD, ``head``) on ``path``; the
        wrapped handler the router calls."""
        resource = self._router.add_resource(path)
        wrapped = self.wrap(handler, resource.canonical)
        if head:
            resource.add_route("HEAD", wrapped)
        resource.add_route(method, wrapped)
        return wrapped

    def finish(self) -> None:
        """The catch-all, after every route."""
        routes = web.UrlDispatcher()
        for resource in self._router.resources():
            routes.register_resource(resource)

        async def unrouted(request: web.Request) -> web.StreamResponse:
            refusal = getattr(await routes.resolve(request), "http_exception", None)
            raise refusal if refusal is not None else web.HTTPNotFound()

        anything = r"/{path:[\s\S]*}"  # newlines too (a path may decode to one)
        self._router.add_resource(anything).add_route("*", self.wrap(unrouted, "unmatched"))

    def wrap(self, handler: Handler, route: str) -> Handler:
        """``handler`` answering in the error contract, counted under ``route``."""
        access_log = self._access_log
        observe = _CHILDREN.observe

        async def edge(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except FlashsaleError as exc:
                response = error_response(exc)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
                response = json_response(error_document(code, message), exc.status)
                if exc.status == 405:
                    response.headers["Allow"] = exc.headers.get("Allow", "")
            except Exception as exc:
                response = _failure(request, route, exc)
            elapsed = time.perf_counter() - started
            observe(route, request.method, response.status, elapsed)
            if access_log:
                request_id = response.headers.get("X-Request-ID") or request_id_of(request)
                if not response.prepared:
                    response.headers["X-Request-ID"] = request_id
                access.info("request_id=%s method=%s route=%s status=%d ms=%.2f", request_id,
                            request.method, route, response.status, elapsed * 1000)
            return response

        edge.__name__ = getattr(handler, "__name__", "edge")
        return edge


_OUTAGE_EVERY = 10.0  # seconds between two log lines of one kind of outage
_outages_logged: dict[tuple[str, str], float] = {}


def _note_outage(route: str, exc: Exception, status: int = 503) -> None:
    """One warning per kind of outage every _OUTAGE_EVERY seconds: a 503 says Redis or
    Postgres, the log says why (the exception's type and Redis's error code: OOM,
    LOADING, READONLY...), which readiness (a PING) does not always see; a 409 for a lost
    lock fight names the Postgres error (a transaction that could retry by itself). No
    exception text: a driver's can quote the command or the row."""
    kind = (type(exc).__name__, getattr(exc, "status_code", None) or "")
    now = time.monotonic()
    if now - _outages_logged.get(kind, -_OUTAGE_EVERY) < _OUTAGE_EVERY:
        return
    _outages_logged[kind] = now
    log.warning("%s answered %d (%s%s; the next such line in %.0f s at the earliest)",
                route, status, kind[0], f", Redis said {kind[1]}" if kind[1] else "",
                _OUTAGE_EVERY)


def _failure(request: web.Request, route: str, exc: Exception) -> web.Response:
    outage = as_unavailable(exc)
    if outage is not None:
        _note_outage(route, exc)
        return error_response(outage)
    contention = as_contention(exc)
    if contention is not None:
        _note_outage(route, exc, contention.status)
        return error_response(contention)
    request_id = request_id_of(request)
    # The exception's text is left out: a driver error's detail can quote a row (a
    # provider token, an address); the type and frames locate the bug.
    log.error("unhandled error request_id=%s %s %s: %s\n%s", request_id, request.method,
              route, type(exc).__name__,
              "".join(traceback.format_tb(exc.__traceback__)).rstrip())
    return json_response(
        error_document("internal_error", "Something went wrong on our side.",
                       {"request_id": request_id}), 500, {"X-Request-ID": request_id})
