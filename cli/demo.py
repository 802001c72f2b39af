"""flashsale demo."""

import click


@click.command()
def demo() -> None:
    """Run a flash sale with thousands of simulated buyers and summarise it."""
    raise click.ClickException("the demo arrives with issue 4")
