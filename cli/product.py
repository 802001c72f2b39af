"""flashsale product create | show | list"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import click

from cli.common import CommandError, emit, json_option, run, settings, to_builtins


async def _with_products(work):
    from catalog.cache import CatalogCache
    from catalog.products import Products
    from engine.connections import close_pool, create_pool, open_redis

    config = settings()
    redis = await open_redis(config)
    pool = await create_pool(config, min_size=1, max_size=2)
    try:
        return await work(Products(pool=pool, cache=CatalogCache(redis=redis)), pool)
    finally:
        await close_pool(pool)
        await redis.aclose()


def _text(p: dict) -> str:
    return (f"product {p['product_id']}: {p['name']} ({p['brand'] or 'no brand'}) at "
            f"{p['price']} {p['currency']}, {p['available_qty']} in stock, {p['status']}")


@click.group()
def product() -> None:
    """Create and look up products (the catalog's seller API, from the shell)."""


@product.command("create")
@click.option("--name", required=True)
@click.option("--price", required=True, help="e.g. 19.99")
@click.option("--stock", type=click.IntRange(0), default=0, show_default=True,
              help="Units available.")
@click.option("--brand", default="")
@click.option("--description", default="")
@click.option("--category-id", type=click.IntRange(1), default=None)
@click.option("--currency", default="USD", show_default=True)
@json_option
def create(name, price, stock, brand, description, category_id, currency, as_json) -> None:
    """Create a product with its stock."""
    from engine.money import check_amount
    try:
        amount = check_amount(Decimal(price))
    except (InvalidOperation, ValueError) as exc:
        raise CommandError(f"--price {price!r} is not an amount like 19.99 ({exc})",
                           code="validation_failed") from exc
    made = run(_with_products(lambda products, _pool: products.create(
        seller_id=None, name=name, description=description, brand=brand,
        category_id=category_id, price=amount, currency=currency, available_qty=stock)))
    data = to_builtins(made)
    emit(data, as_json, "created " + _text(data))


@product.command("show")
@click.argument("product_id", type=int)
@json_option
def show(product_id: int, as_json: bool) -> None:
    """One product, read from Postgres."""
    from engine.errors import NotFound

    async def work(products, _pool):
        found = await products.load(product_id)
        if found is None:
            raise NotFound(f"No product {product_id}.")
        return found

    data = to_builtins(run(_with_products(work)))
    emit(data, as_json, _text(data))


@product.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--status", type=click.Choice(["active", "inactive", "archived"]), default=None)
@json_option
def list_products(limit: int, status: str | None, as_json: bool) -> None:
    """Products, newest first."""
    async def work(products, pool):
        ids = [r["product_id"] for r in await pool.fetch(
            "SELECT product_id FROM products WHERE $1::text IS NULL OR status = $1"
            " ORDER BY created_at DESC, product_id DESC LIMIT $2", status, limit)]
        return await products.load_many(ids, active_only=False)

    items = [to_builtins(p) for p in run(_with_products(work))]
    emit({"items": items}, as_json, "\n".join(_text(p) for p in items) or "no products")
