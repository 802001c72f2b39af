"""The pages a person opens in a browser: `/`, `/console` and `/docs`.

Every asset ships with the package and is served from here (operators may sit behind a
closed network): our own files from ``gateway/static/``, Swagger UI's from the
``swagger-ui-py`` distribution's static folder (located without importing that package,
whose web-framework adapters we do not use). Assets are read once, at start-up, into a
fixed table: a request can only name a file of that table, never a path. Text files are
kept gzipped too (Swagger UI's bundle is 1.5 MB, 0.4 MB packed) and every file carries an
ETag, so a console reopened after a deploy gets the new files and otherwise a 304.

Each page carries a Content-Security-Policy that lets it load nothing but this origin's
files and talk to nothing but this origin, so a page cannot leak the operator token
elsewhere, and the browser tests can prove the pages work offline.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from engine.errors import NotFound

if TYPE_CHECKING:
    from gateway.middleware import Edge

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".png": "image/png"}
# The Swagger UI files the docs page needs (its standalone layout and editor are not used).
_SWAGGER_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'")
# Swagger UI sets style attributes in its markup (React), so its page allows inline style.
_DOCS_CSP = _CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None  # None when compressing does not pay
    content_type: str
    etag: str


def swagger_ui_dir() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed; `pip install -e .` installs it.")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _asset(path: Path | importlib.resources.abc.Traversable) -> Asset:
    body = path.read_bytes()
    content_type = _TYPES[Path(path.name).suffix]
    gzipped = None
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
        packed = gzip.compress(body, 6, mtime=0)
        gzipped = packed if len(packed) < len(body) * 0.9 else None
    return Asset(body, gzipped, content_type, f'"{hashlib.sha256(body).hexdigest()[:24]}"')


@functools.cache
def load_assets() -> tuple[dict[str, Asset], dict[str, Asset]]:
    """(our files by name, Swagger UI's files by name): read and compressed once per
    process (every app a process builds shares them; they never change while it runs)."""
    ours = {entry.name: _asset(entry)
            for entry in importlib.resources.files("gateway.static").iterdir()
            if Path(entry.name).suffix in _TYPES}
    swagger = {name: _asset(swagger_ui_dir() / name) for name in _SWAGGER_FILES}
    return ours, swagger


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower().removeprefix("q=")
            try:
                return not params or float(quality) > 0
            except ValueError:
                return False
    return False


def _serve(request: web.Request, asset: Asset, *, csp: str) -> web.Response:
    # Revalidated on every use (no-cache + ETag): a deploy reaches open consoles at their
    # next load, and an unchanged file costs a 304.
    headers = {"Content-Type": asset.content_type, "Cache-Control": "no-cache",
               "ETag": asset.etag, "Vary": "Accept-Encoding",
               "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    if asset.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        headers["Content-Encoding"] = "gzip"
        body = asset.gzipped
    return web.Response(body=body, headers=headers)


def add_pages(edge: Edge) -> None:
    ours, swagger = load_assets()

    def page(name: str, csp: str = _CSP):
        asset = ours[name]

        async def handler(request: web.Request) -> web.Response:
            return _serve(request, asset, csp=csp)
        handler.__name__ = name.replace(".", "_")
        return handler

    def files(table: dict[str, Asset]):
        async def handler(request: web.Request) -> web.Response:
            asset = table.get(request.match_info["name"])
            if asset is None:
                raise NotFound("No such file.")
            return _serve(request, asset, csp=_CSP)
        return handler

    edge.add("GET", "/", page("index.html"), head=True)
    edge.add("GET", "/console", page("console.html"), head=True)
    edge.add("GET", "/docs", page("docs.html", _DOCS_CSP), head=True)
    edge.add("GET", "/static/{name}", files(ours), head=True)
    edge.add("GET", "/docs/assets/{name}", files(swagger), head=True)
