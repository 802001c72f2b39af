"""flashsale catalog ..."""

import click


@click.group()
def catalog() -> None:
    """Catalog tools."""


@catalog.command("seed")
@click.option("--products", type=click.IntRange(1), default=1000, show_default=True)
def seed(products: int) -> None:
    """Load a deterministic synthetic catalog."""
    raise click.ClickException("catalog seeding arrives with issue 6")
