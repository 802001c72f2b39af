"""flashsale reconcile"""

from __future__ import annotations

import click

from cli.common import CommandError, run, server_settings, start_again


@click.command()
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics, /healthz, /readyz here (default FLASHSALE_METRICS_PORT; "
                   "0 = none).")
@click.option("--consumer", "consumer_name", default=None,
              help="Consumer name in the stream group (default host-pid).")
def reconcile(metrics_port: int | None, consumer_name: str | None) -> None:
    """Stream sale events into Postgres and expire unpaid holds (SIGTERM stops cleanly)."""
    from cli.main import preflight
    from engine.connections import ClusterModeChanged
    from engine.errors import Misconfigured
    from engine.preflight import check_port
    from reconciler.service import run_reconciler

    config = server_settings()
    port = config.metrics_port if metrics_port is None else metrics_port
    try:
        if port:
            check_port(config.host, port, "the reconciler's metrics")
    except Misconfigured as exc:
        raise CommandError(exc.message, code=exc.code) from exc
    run(preflight(config))
    try:
        run(run_reconciler(config, metrics_port=port or None, consumer_name=consumer_name))
    except ClusterModeChanged as exc:
        start_again(exc)
