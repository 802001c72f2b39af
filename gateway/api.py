"""Declarative routes: each handler states its body, query and response types once.

The wrapper built here decodes and validates the request with one msgspec decoder per
type (built at import time), checks authentication, calls the handler and encodes its
answer. The same declarations generate the OpenAPI document (gateway/openapi.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from accounts.tokens import Principal
from engine.codec import encode
from engine.errors import (
    Forbidden,
    InvalidJSON,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ValidationFailed,
)
from engine.money import check_amount
from gateway.policy import (
    check_text,
    decimal_fields,
    decode_hook,
    has_control,
    holds_money,
    might_hold_control,
    plain,
)

# public: anyone; user: any signed-in user or the operator token (seller routes, where an
# admin acts for any seller); owner: a signed-in user acting on their own account, cart,
# orders and holds (the operator token is refused with 403, an admin acts as themselves;
# staff support goes through /api/v1/admin/...); admin: an admin user or the operator.
Auth = Literal["public", "user", "owner", "admin"]
PRINCIPAL = web.RequestKey("principal", Principal)

_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)


_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json"})


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    # Headers handed over ready-made: aiohttp's content_type= path parses and rebuilds
    # them (3.6 µs a response here, against 1.8). Response copies what it is given, so
    # the shared ones go as they are.
    ready = _JSON_HEADERS
    if headers:
        ready = ready.copy()
        ready.update(headers)
    return web.Response(body=encode(value), status=status, headers=ready)


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every request body: unknown fields are refused (no mass assignment), and
    every Decimal field is money: finite, non-negative, at most two decimal places."""

    def __post_init__(self) -> None:
        kind = type(self)
        names = _DECIMAL_FIELDS.get(kind)
        if names is None:
            names = _DECIMAL_FIELDS[kind] = decimal_fields(kind)
        for name in names:
            value = getattr(self, name)
            if isinstance(value, Decimal):
                try:
                    check_amount(value)
                except ValueError as exc:
                    raise ValueError(f"`{name}` {exc}") from None


_DECIMAL_FIELDS: dict[type, tuple[str, ...]] = {}  # per body type: what __post_init__ checks


@dataclass(slots=True)
class Reply:
    """A handler's answer with a status other than the route's default."""
    body: Any
    status: int


def validation_error(exc: msgspec.ValidationError, root: str = "$") -> ValidationFailed:
    match = _AT_PATH.match(str(exc))
    message = match.group("msg") if match else str(exc)
    path = (match.group("path") if match else None) or root
    if root != "$" and path.startswith("$"):
        path = root + path[1:]
    return ValidationFailed(f"{message} at {path}.",
                            details=[{"path": path, "message": message}])


@dataclass(slots=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    auth: Auth
    body: type | None
    query: type | None
    response: Any
    status: int
    summary: str
    tag: str
    errors: tuple[int, ...]
    also: tuple[int, ...] = ()  # other success statuses with the same body (200 on replay)
    hot: bool = False  # answered in the hot lane (gateway/hot.py): its handler uses HotRequest
    decoder: msgspec.json.Decoder | None = field(default=None, repr=False)


class RouteTable:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []

    def route(self, method: str, path: str, *, auth: Auth = "user", body: type | None = None,
              query: type | None = None, response: Any = None, status: int = 200,
              summary: str = "", errors: tuple[int, ...] = (),
              also: tuple[int, ...] = (), hot: bool = False) -> Callable:
        def register(handler: Callable[..., Awaitable[Any]]) -> Callable:
            self.routes.append(Route(
                method=method, path=path, handler=handler, auth=auth, body=body, query=query,
                response=response, status=status,
                summary=summary or (handler.__doc__ or "").strip().split("\n")[0],
                tag=self.tag, errors=errors, also=also, hot=hot,
                decoder=msgspec.json.Decoder(body, dec_hook=decode_hook)
                if body is not None else None))
            return handler
        return register

    def get(self, path: str, **kw: Any) -> Callable:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable:
        return self.route("DELETE", path, **kw)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def path_int(request: web.Request, name: str) -> int:
    """An integer id from the path; anything else is an unknown id (404)."""
    raw = request.match_info[name]
    # ASCII only: str.isdigit() also accepts superscripts (int() then raises) and
    # fullwidth digits (int() reads them as numbers).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound()
    return int(raw)


@dataclass(slots=True)
class BodyLimits:
    """How much, how slowly and how many at once a client may send."""
    max_bytes: int
    timeout: float = 10.0
    per_client: int = 32
    reading: dict[str, int] = field(default_factory=dict)  # client address -> bodies


async def _receive(request: web.Request, limits: BodyLimits) -> bytes:
    """A body still on its way: at most ``per_client`` such reads per client address at
    once, each within ``timeout``."""
    client = request.remote or ""
    if limits.reading.get(client, 0) >= limits.per_client:
        refused = RateLimited(1, "Too many requests are still sending their bodies.")
        refused.close_connection = True  # its body stays unread
        raise refused
    limits.reading[client] = limits.reading.get(client, 0) + 1
    try:
        async with asyncio.timeout(limits.timeout):
            return await request.read()
    except TimeoutError as exc:
        raise RequestTimeout(f"The body did not arrive within {limits.timeout:g} s.") from exc
    finally:
        left = limits.reading[client] - 1
        if left:
            limits.reading[client] = left
        else:
            del limits.reading[client]


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is over {max_bytes} bytes.")


UNREAD = object()  # what ready_body answers for a body still on its way


def ready_body(request: web.Request, decoder: msgspec.json.Decoder,
               limits: BodyLimits, money: bool = True) -> Any:
    """The decoded body when it came with the headers (nearly every request), with no
    coroutine or wait; else ``UNREAD`` (``read_body`` then reads it). What aiohttp's
    read() would refuse is refused here. ``money``: the type may hold Money (``plain``)."""
    max_bytes = limits.max_bytes
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    content = request.content
    if not content.is_eof():
        return UNREAD
    raw = content.read_nowait()
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    return decode_body(raw, decoder, money)


async def read_body(request: web.Request, decoder: msgspec.json.Decoder,
                    limits: BodyLimits, money: bool = True) -> Any:
    """A body still on its way (``ready_body`` answered ``UNREAD``, its declared length
    checked): waited for within the limits, then decoded."""
    try:
        raw = await _receive(request, limits)
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large(limits.max_bytes) from exc
    return decode_body(raw, decoder, money)


def decode_body(raw: bytes, decoder: msgspec.json.Decoder, money: bool = True) -> Any:
    if not raw:
        raise InvalidJSON("The request needs a JSON body.")
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise InvalidJSON() from exc
    if might_hold_control(raw):
        check_text(body)
    if money:
        plain(body)
    return body


def read_query(request: web.Request, query_type: type) -> Any:
    for name, value in request.query.items():
        if has_control(name) or has_control(value):
            raise ValidationFailed.at(f"query.{name}", "must not contain control characters")
    try:
        query = msgspec.convert(dict(request.query), query_type, strict=False,
                                dec_hook=decode_hook)
        plain(query)
        return query
    except msgspec.ValidationError as exc:
        raise validation_error(exc, root="query") from exc


class Verify(Protocol):
    """The bearer check: ``cached`` answers from this process's caches (no coroutine)
    or None, and calling it reads what the caches lack."""

    def cached(self, header: str | None) -> Principal | None: ...

    async def __call__(self, header: str | None) -> Principal: ...


def bind(route: Route, *, verify: Verify,
         limits: BodyLimits) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for ``route``: auth, decode, call, encode."""
    handler, status, auth = route.handler, route.status, route.auth
    decoder, query_type = route.decoder, route.query
    money = route.body is not None and holds_money(route.body)

    async def endpoint(request: web.Request) -> web.StreamResponse:
        for segment in request.match_info.values():
            if has_control(segment):
                raise NotFound()  # no id of ours contains one
        if auth != "public":
            header = request.headers.get("Authorization")
            who = verify.cached(header)
            if who is None:
                who = await verify(header)
            if auth == "admin":
                who.require_admin()
            elif auth == "owner" and who.operator:
                raise Forbidden("The operator token acts on admin routes only; sign in as "
                                "the user.")
            request[PRINCIPAL] = who
        if decoder is not None:
            body = ready_body(request, decoder, limits, money)
            if body is UNREAD:
                body = await read_body(request, decoder, limits, money)
            result = await (handler(request, body, read_query(request, query_type))
                            if query_type is not None else handler(request, body))
        elif query_type is not None:
            result = await handler(request, read_query(request, query_type))
        else:
            result = await handler(request)
        if type(result) is Reply:
            return json_response(result.body, result.status)
        # A struct first: StreamResponse is an ABC (a MutableMapping), its isinstance slow.
        if isinstance(result, msgspec.Struct) or not isinstance(result, web.StreamResponse):
            return json_response(result, status)
        return result

    endpoint.__name__ = handler.__name__
    return endpoint
