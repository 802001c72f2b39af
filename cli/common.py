"""What every command shares: settings, running a coroutine, printing a result."""

from __future__ import annotations

import json
from typing import Any

import click

from engine.settings import Settings


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def run(coro) -> Any:
    """Run a coroutine on uvloop; turn outages and typed errors into one-line messages."""
    import uvloop

    from engine.errors import FlashsaleError, as_unavailable
    try:
        return uvloop.run(coro)
    except FlashsaleError as exc:
        raise click.ClickException(exc.message) from exc
    except Exception as exc:
        outage = as_unavailable(exc)
        if outage is None:
            raise
        raise click.ClickException(f"{outage.message} ({exc})") from exc


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print ``text``, or ``data`` as JSON with --json."""
    click.echo(json.dumps(data, default=str, indent=2) if as_json else text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


async def with_sales(work):
    """Open the connections a sale command needs, run ``work(sales)``, close them."""
    from engine.connections import close_pool, create_pool, create_redis
    from engine.sales import Sales

    config = settings()
    redis = create_redis(config)
    pool = await create_pool(config, min_size=1, max_size=2)
    try:
        return await work(Sales(pool=pool, redis=redis))
    finally:
        await close_pool(pool)
        await redis.aclose()
