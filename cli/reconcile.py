"""flashsale reconcile."""

import click


@click.command()
@click.option("--metrics-port", type=int, default=None, help="Port for /metrics and /readyz.")
def reconcile(metrics_port: int | None) -> None:
    """Stream sale events into Postgres and expire unpaid holds."""
    raise click.ClickException("the reconciler arrives with issue 4")
