"""flashsale audit."""

import click

from cli.common import json_option


@click.command()
@click.argument("sale_id", type=int, required=False)
@json_option
def audit(sale_id: int | None, as_json: bool) -> None:
    """Check the stock invariant in Redis and against Postgres; exit 1 on a mismatch."""
    raise click.ClickException("the audit arrives with issue 4")
