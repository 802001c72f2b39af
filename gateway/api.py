"""Declarative routes: each handler states its body, query and response types once.

The wrapper built here decodes and validates the request with one msgspec decoder per
type (built at import time), checks authentication, calls the handler and encodes its
answer. The same declarations generate the OpenAPI document (gateway/openapi.py).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import msgspec
from aiohttp import web

from accounts.tokens import Principal
from engine.errors import InvalidJSON, NotFound, PayloadTooLarge, ValidationFailed
from engine.money import check_amount

Auth = Literal["public", "user", "admin"]
PRINCIPAL = web.RequestKey("principal", Principal)

_encoder = msgspec.json.Encoder(decimal_format="string")
_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status,
                        content_type="application/json", headers=headers)


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every request body: unknown fields are refused (no mass assignment), and
    every Decimal field is money: finite, non-negative, at most two decimal places."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Decimal):
                try:
                    check_amount(value)
                except ValueError as exc:
                    raise ValueError(f"`{name}` {exc}") from None


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
    decoder: msgspec.json.Decoder | None = field(default=None, repr=False)


class RouteTable:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []

    def route(self, method: str, path: str, *, auth: Auth = "user", body: type | None = None,
              query: type | None = None, response: Any = None, status: int = 200,
              summary: str = "", errors: tuple[int, ...] = ()) -> Callable:
        def register(handler: Callable[..., Awaitable[Any]]) -> Callable:
            self.routes.append(Route(
                method=method, path=path, handler=handler, auth=auth, body=body, query=query,
                response=response, status=status,
                summary=summary or (handler.__doc__ or "").strip().split("\n")[0],
                tag=self.tag, errors=errors,
                decoder=msgspec.json.Decoder(body) if body is not None else None))
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
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound()
    return int(raw)


async def read_body(request: web.Request, decoder: msgspec.json.Decoder, max_bytes: int) -> Any:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.") from exc
    if not raw:
        raise InvalidJSON("The request needs a JSON body.")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise InvalidJSON() from exc


def read_query(request: web.Request, query_type: type) -> Any:
    try:
        return msgspec.convert(dict(request.query), query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, root="query") from exc


def bind(route: Route, *, verify: Callable[[str | None], Principal], max_bytes: int
         ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for ``route``: auth, decode, call, encode."""
    handler, status, auth = route.handler, route.status, route.auth
    decoder, query_type = route.decoder, route.query

    async def endpoint(request: web.Request) -> web.StreamResponse:
        if auth != "public":
            who = verify(request.headers.get("Authorization"))
            if auth == "admin":
                who.require_admin()
            request[PRINCIPAL] = who
        args: list[Any] = []
        if decoder is not None:
            args.append(await read_body(request, decoder, max_bytes))
        if query_type is not None:
            args.append(read_query(request, query_type))
        result = await handler(request, *args)
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, Reply):
            return json_response(result.body, result.status)
        return json_response(result, status)

    endpoint.__name__ = handler.__name__
    return endpoint
