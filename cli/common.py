"""What every command shares: settings, running a coroutine, printing a result, and one
line (or, under --json, one JSON error object on stderr) for every mistake."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, NoReturn

import click

from engine.codec import error_document
from engine.settings import Settings

_json_errors = False  # set by --json: errors go to stderr as the API's error object


class CommandError(click.ClickException):
    """A failure the operator can act on: one line, or {"error": {...}} under --json."""

    exit_code = 1

    def __init__(self, message: str, *, code: str = "error", details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details

    def show(self, file=None) -> None:
        out = file or sys.stderr
        if _json_errors:
            click.echo(json.dumps(error_document(self.code, self.message, self.details)),
                       file=out)
        else:
            click.echo(f"Error: {self.message}", file=out)


_settings: Settings | None = None


def settings() -> Settings:
    global _settings
    if _settings is None:
        try:
            _settings = Settings.from_env()
        except ValueError as exc:
            raise CommandError(str(exc), code="misconfigured") from exc
    return _settings


def explain(exc: BaseException) -> CommandError | None:
    """The one-line error an exception means to an operator, or None for a bug."""
    from engine.errors import (
        POSTGRES_REFUSING,
        REDIS_REFUSING,
        FlashsaleError,
        as_unavailable,
    )
    from engine.preflight import explain_postgres, explain_redis, where

    if isinstance(exc, FlashsaleError):
        return CommandError(exc.message, code=exc.code, details=exc.details)
    config = settings()
    line = explain_postgres(exc, config.database_url) or explain_redis(exc, config.redis_url)
    if line is not None:
        return CommandError(line, code="misconfigured")
    outage = as_unavailable(exc)
    if outage is not None:
        url = {"redis": config.redis_url, "postgres": config.database_url}.get(
            outage.dependency or "")
        if url is None:
            return CommandError(f"{outage.message} ({exc})", code=outage.code)
        name = {"redis": "Redis", "postgres": "Postgres"}[outage.dependency or ""]
        if isinstance(exc, (*REDIS_REFUSING, *POSTGRES_REFUSING)):
            said = getattr(exc, "status_code", None) or type(exc).__name__
            return CommandError(f"{name} at {where(url)} refuses for now ({said}: {exc}); "
                                "retry once it takes commands again.", code=outage.code,
                                details=outage.details)
        return CommandError(f"cannot reach {name} at {where(url)} ({exc}); is it running? "
                            "Retry once it answers.", code=outage.code,
                            details=outage.details)
    return None


def server_settings() -> Settings:
    """Settings of a long-running process that signs or checks tokens (serve, reconcile):
    the development secret only in development."""
    config = settings()
    try:
        config.check_secret()
    except ValueError as exc:
        raise CommandError(str(exc), code="misconfigured") from exc
    return config


def run(coro) -> Any:
    """Run a coroutine on uvloop; turn outages, refusals and typed errors into one line."""
    import uvloop

    try:
        return uvloop.run(coro)
    except Exception as exc:
        error = explain(exc)
        if error is None:
            raise
        raise error from exc


def start_again(reason: object) -> NoReturn:
    """Run this command again in this process (exec: the same pid, so a supervisor, a
    container or a test holding it sees one process that never stopped): for a
    long-running process that must rebuild its connections from scratch, after it has
    shut down cleanly (engine.connections.ClusterModeChanged)."""
    logging.getLogger("flashsale").warning("%s: starting again", reason)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def to_builtins(data: Any) -> Any:
    """JSON-ready data: ISO 8601 times (UTC 'Z'), money as strings, Structs as objects."""
    import msgspec

    return msgspec.to_builtins(data, enc_hook=str)


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print ``text``, or ``data`` as JSON with --json (one shape: ISO 8601 times)."""
    click.echo(json.dumps(to_builtins(data), indent=2) if as_json else text)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    global _json_errors
    _json_errors = _json_errors or value
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_remember_json,
                           is_eager=True,
                           help="Print the result as JSON (errors as JSON on stderr).")


async def with_sales(work):
    """Open the connections a sale command needs, run ``work(sales)``, close them."""
    from engine.connections import close_pool, create_pool, open_redis
    from engine.sales import Sales

    config = settings()
    redis = await open_redis(config)
    pool = await create_pool(config, min_size=1, max_size=2)
    try:
        return await work(Sales(pool=pool, redis=redis))
    finally:
        await close_pool(pool)
        await redis.aclose()
