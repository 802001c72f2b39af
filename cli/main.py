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

from cli import audit, catalog, demo, notify, reconcile, sale
from cli.common import emit, json_option, run, settings


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
    from gateway.server import serve as serve_gateway

    config = settings()
    try:
        serve_gateway(config, host=host or config.host, port=port or config.port,
                      workers=workers)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


for command in (reconcile.reconcile, sale.sale, audit.audit, catalog.catalog, demo.demo):
    cli.add_command(command)
cli.add_command(notify.notify)


def main() -> None:
    cli(prog_name="flashsale")


if __name__ == "__main__":
    sys.exit(main())
