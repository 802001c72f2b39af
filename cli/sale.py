"""flashsale sale ..."""

import click


@click.group()
def sale() -> None:
    """Create and operate flash sales."""


@sale.command("create")
def create() -> None:
    """Create a sale and pre-load its tokens."""
    raise click.ClickException("sales arrive with issue 3")
