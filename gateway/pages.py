"""The pages a person opens in a browser: `/`, `/console` and `/docs`.

Every asset ships with the package and is served from here (operators may sit behind a
closed network): our own files from ``gateway/static/``, Swagger UI's from the
``swagger-ui-py`` distribution's static folder (located without importing that package,
whose web-framework adapters we do not use). Assets are read once, at start-up, into a
fixed table: a request can only name a file of that table, never a path.

Each page carries a Content-Security-Policy that lets it load nothing but this origin's
files and talk to nothing but this origin, so a page cannot leak the operator token
elsewhere, and the browser tests can prove the pages work offline.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from engine.errors import NotFound

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
    content_type: str


def swagger_ui_dir() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed; `pip install -e .` installs it.")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _asset(path: Path | importlib.resources.abc.Traversable) -> Asset:
    suffix = Path(path.name).suffix
    content_type = _TYPES[suffix]
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    return Asset(path.read_bytes(), content_type)


def load_assets() -> tuple[dict[str, Asset], dict[str, Asset]]:
    """(our files by name, Swagger UI's files by name)."""
    ours = {entry.name: _asset(entry)
            for entry in importlib.resources.files("gateway.static").iterdir()
            if Path(entry.name).suffix in _TYPES}
    swagger = {name: _asset(swagger_ui_dir() / name) for name in _SWAGGER_FILES}
    return ours, swagger


def _serve(asset: Asset, *, csp: str, cache: str) -> web.Response:
    return web.Response(body=asset.body, headers={
        "Content-Type": asset.content_type, "Cache-Control": cache,
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})


def add_pages(app: web.Application) -> None:
    ours, swagger = load_assets()

    def page(name: str, csp: str = _CSP):
        asset = ours[name]

        async def handler(request: web.Request) -> web.Response:
            return _serve(asset, csp=csp, cache="no-cache")
        handler.__name__ = name.replace(".", "_")
        return handler

    def files(table: dict[str, Asset]):
        async def handler(request: web.Request) -> web.Response:
            asset = table.get(request.match_info["name"])
            if asset is None:
                raise NotFound("No such file.")
            return _serve(asset, csp=_CSP, cache="public, max-age=300")
        return handler

    app.router.add_get("/", page("index.html"))
    app.router.add_get("/console", page("console.html"))
    app.router.add_get("/docs", page("docs.html", _DOCS_CSP))
    app.router.add_get("/static/{name}", files(ours))
    app.router.add_get("/docs/assets/{name}", files(swagger))
