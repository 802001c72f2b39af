"""flashsale catalog ..."""

from __future__ import annotations

import dataclasses

import click

from cli.common import emit, json_option, run, settings


@click.group()
def catalog() -> None:
    """Catalog tools."""


@catalog.command("seed")
@click.option("--products", type=click.IntRange(1, 50_000_000), default=1000, show_default=True,
              help="How many products to add.")
@click.option("--seed", "seed_value", type=click.IntRange(0), default=1, show_default=True,
              help="The same seed and count always give the same catalog.")
@json_option
def seed(products: int, seed_value: int, as_json: bool) -> None:
    """Load a deterministic synthetic catalog (COPY; indexes rebuilt after large loads).

    Categories and 50 seller accounts are created when missing; products are appended.
    """
    report = run(_seed(products, seed_value))
    data = dataclasses.asdict(report)
    rate = report.products / report.seconds if report.seconds else 0
    emit(data, as_json,
         f"seeded {report.products} products (ids {report.first_product_id}.."
         f"{report.last_product_id}) in {report.seconds:.1f} s ({rate:,.0f}/s); "
         f"{report.categories} categories, {report.sellers} sellers, {report.terms} terms")


async def _seed(products: int, seed_value: int):
    import asyncio
    import secrets

    from accounts.passwords import hash_password
    from catalog.seed import seed_catalog
    from engine.migrate import migrate

    config = settings()
    await migrate(config.database_url)
    # Seeded sellers get a random password nobody knows: an admin acts for them.
    password_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(24))
    # Progress goes to stderr so stdout stays clean for --json.
    bar = click.progressbar(length=products, label="products", show_pos=True,
                            show_eta=True, file=click.get_text_stream("stderr"))
    with bar:
        return await seed_catalog(
            config.database_url, products=products, seed=seed_value,
            password_hash=password_hash, on_progress=bar.update,
            on_phase=lambda text: click.echo(f"  {text}...", err=True))
