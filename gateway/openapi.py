"""The OpenAPI 3.1 document, generated from the route table and msgspec schemas."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.api import Route
from gateway.policy import schema_hook


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    details: Any = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_STATUS_TEXT = {
    200: "OK", 201: "Created", 400: "Malformed JSON",
    401: "Missing, bad, expired or revoked token",
    403: "Not allowed", 404: "Unknown id", 408: "Body sent too slowly",
    409: "State conflict", 413: "Body too large", 422: "Well-formed but unacceptable",
    429: "Rate limited (Retry-After)", 503: "Redis or Postgres down (Retry-After)",
}
_PATH_PARAM = re.compile(r"{(\w+)}")
# Ids in paths are ASCII digits (anything else is an unknown id: 404); the others are
# text without control characters.
_ID_PARAM = {"type": "string", "pattern": "^[0-9]{1,18}$"}
_TEXT_PARAM = {"type": "string", "minLength": 1, "maxLength": 100}
_TEXT_PARAMS = {"reservation_id", "code"}


# What the edge's text policy (gateway/policy.py) lets through: no control characters
# other than tab, newline and carriage return.
_PLAIN_TEXT = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"


def _text_policy(schema: Any, components: dict[str, Any], seen: set[str]) -> None:
    """Mark every free string a request may carry with the text policy's pattern."""
    if isinstance(schema, list):
        for item in schema:
            _text_policy(item, components, seen)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            _text_policy(components.get(name), components, seen)
        return
    if schema.get("type") == "string" and not ({"pattern", "enum", "format", "const"}
                                               & schema.keys()):
        schema["pattern"] = _PLAIN_TEXT
    for value in schema.values():
        if isinstance(value, (dict, list)):
            _text_policy(value, components, seen)


def _service_routes() -> dict[str, dict]:
    """The routes served outside the route table: health, readiness, the document."""
    def op(summary: str, codes: dict[int, tuple[str, dict]]) -> dict:
        return {"get": {"summary": summary, "tags": ["service"], "responses": {
            str(code): {"description": text, "content": {media: {"schema": {}}}}
            for code, (text, media_schema) in codes.items()
            for media in media_schema}}}
    json_any = {"application/json": {}}
    return {
        "/healthz": op("The process runs.", {200: ("OK", json_any)}),
        "/readyz": op("Redis and Postgres answer.", {200: ("Ready", json_any),
                                                      503: ("Not ready", json_any)}),
        "/api/v1/openapi.json": op("This document.", {200: ("OK", json_any)}),
    }


def _names_ids(request_type: type | None) -> bool:
    return request_type is not None and any(
        f.name.endswith(("_id", "_ids")) for f in msgspec.structs.fields(request_type))


def _fields(schema: Any, components: dict[str, Any]) -> set[str]:
    """The top-level field names of an object schema (one ``$ref`` followed)."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if isinstance(ref, str):
        schema = components.get(ref.rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {})) if isinstance(schema, dict) else set()


def _link(paths: dict[str, dict], components: dict[str, Any]) -> None:
    """OpenAPI links: a success answer that carries every path parameter of another
    operation (a created sale's ``sale_id``, a hold's ``reservation_id``) links to it, so
    clients and generators (schemathesis's stateful phase) can follow what was made."""
    targets = [(op["operationId"], names) for path, ops in paths.items()
               for op in ops.values()
               if (names := _PATH_PARAM.findall(path))]
    for ops in paths.values():
        for op in ops.values():
            for code, answer in op["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if not code.startswith("2") or schema is None:
                    continue
                fields = _fields(schema, components)
                links = {target: {"operationId": target, "parameters": {
                             name: f"$response.body#/{name}" for name in names}}
                         for target, names in targets
                         if target != op["operationId"] and fields.issuperset(names)}
                if links:
                    answer["links"] = links


def build_openapi(routes: list[Route], *, title: str = "flashsale", version: str = "1") -> dict:
    types: list[Any] = [ErrorBody]
    for r in routes:
        types.extend(t for t in (r.body, r.query, r.response) if t is not None)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}", schema_hook=schema_hook)
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    seen: set[str] = set()
    for r in routes:
        for request_type in (r.body, r.query):
            if request_type is not None:
                _text_policy(schema_of[id(request_type)], components, seen)
    error_ref = schema_of[id(ErrorBody)]

    paths: dict[str, dict] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "tags": [r.tag],
                              "operationId": f"{r.tag}_{r.handler.__name__}"}
        params = [{"name": name, "in": "path", "required": True,
                   "schema": _TEXT_PARAM if name in _TEXT_PARAMS else _ID_PARAM}
                  for name in _PATH_PARAM.findall(r.path)]
        if r.query is not None:
            qschema = components.get(r.query.__name__, {})
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required,
                               "schema": prop})
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of[id(r.body)]}}}
        ok: dict[str, Any] = {"description": _STATUS_TEXT.get(r.status, "OK")}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": schema_of[id(r.response)]}}
        responses: dict[str, Any] = {str(r.status): ok}
        for status in r.also:
            responses[str(status)] = {**ok, "description": _STATUS_TEXT.get(status, "OK")}
        codes = set(r.errors)
        if r.body is not None:
            codes |= {400, 408, 413, 422, 429}
        if r.query is not None:
            codes.add(422)
        if r.auth != "public":
            codes.add(401)
        if r.auth in ("admin", "owner"):
            codes.add(403)
        if "{" in r.path or any(_names_ids(t) for t in (r.body, r.query)):
            codes.add(404)  # an id, in the path or sent, may name nothing
        if r.method != "GET":  # a write can lose a fight for a lock (engine.errors)
            codes.add(409)
        codes.add(503)
        for code in sorted(codes):
            responses[str(code)] = {
                "description": _STATUS_TEXT.get(code, "Error"),
                "content": {"application/json": {"schema": error_ref}}}
        op["responses"] = responses
        if r.auth != "public":
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op

    _link(paths, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Flash-sale commerce engine. Errors share one shape: "
                                "{\"error\": {\"code\", \"message\", \"details\"}}."},
        "paths": {**paths, **_service_routes()},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "bearerFormat": "JWT"}}},
    }
