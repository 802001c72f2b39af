"""``flashsale``: the operator's command line.

Heavy modules are imported inside each command, so ``--help`` is instant and ``serve`` can
switch prometheus_client to multiprocess mode before it is imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

import click

from cli import audit, catalog, demo, loadtest, notify, parked, product, reconcile, sale
from cli.common import (
    CommandError,
    emit,
    json_option,
    run,
    server_settings,
    settings,
    start_again,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """flashsale: a commerce engine built to survive flash sales."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@json_option
def migrate(as_json: bool) -> None:
    """Create the database if missing and apply migrations/ in order."""
    from engine.migrate import migrate as apply

    applied = run(apply(settings().database_url))
    emit({"applied": applied}, as_json,
         "applied: " + ", ".join(applied) if applied else "database is up to date")


@cli.command()
@click.option("--host", default=None, help="Address to bind (FLASHSALE_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (FLASHSALE_PORT).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes sharing the port (SO_REUSEPORT).")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the HTTP gateway."""
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must happen before prometheus_client is imported: workers write their metrics
        # to files in this folder and /metrics sums them.
        metrics_dir = tempfile.mkdtemp(prefix="flashsale-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from engine.connections import ClusterModeChanged
    from engine.errors import Misconfigured
    from engine.preflight import check_port
    from gateway.server import serve as serve_gateway

    config = server_settings()
    host, port = host or config.host, port or config.port
    try:
        check_port(host, port, "the gateway", reuse_port=workers > 1)
        run(preflight(config))
        serve_gateway(config, host=host, port=port, workers=workers)
    except Misconfigured as exc:
        raise CommandError(exc.message, code=exc.code) from exc
    except ClusterModeChanged as exc:  # one process; its workers are started again instead
        start_again(exc)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def preflight(config) -> None:
    """Refuse to start on a configuration mistake; start anyway on an outage (the process
    answers 503 and recovers when the dependency comes back)."""
    from engine.preflight import check_postgres, check_redis

    if not await check_postgres(config):
        logging.getLogger("flashsale").warning(
            "Postgres does not answer yet; starting anyway (requests needing it answer 503)")
    if not await check_redis(config):
        logging.getLogger("flashsale").warning(
            "Redis does not answer yet; starting anyway (requests needing it answer 503)")


for command in (reconcile.reconcile, sale.sale, product.product, audit.audit, catalog.catalog,
                demo.demo):
    cli.add_command(command)
sale.sale.add_command(parked.parked)
cli.add_command(notify.notify)
cli.add_command(loadtest.loadtest)


def main() -> None:
    cli(prog_name="flashsale")


if __name__ == "__main__":
    sys.exit(main())
