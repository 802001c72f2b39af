"""flashsale sale create | load-tokens | status | recover"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

import click

from cli.common import emit, json_option, run, with_sales


class _Money(click.ParamType):
    name = "amount"

    def convert(self, value, param, ctx) -> Decimal:
        from engine.money import check_amount
        try:
            return check_amount(Decimal(str(value)))
        except (InvalidOperation, ValueError) as exc:
            self.fail(f"{value!r} is not an amount like 19.99 ({exc})", param, ctx)


class _When(click.ParamType):
    name = "time"

    def convert(self, value, param, ctx) -> datetime:
        from datetime import UTC
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time like 2026-11-27T09:00:00Z", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group()
def sale() -> None:
    """Create and operate flash sales."""


@sale.command("create")
@click.option("--product-id", type=click.IntRange(1), required=True)
@click.option("--quantity", type=click.IntRange(1), required=True, help="Units for sale.")
@click.option("--price", type=_Money(), required=True, help="Sale price, e.g. 19.99.")
@click.option("--per-user-limit", type=click.IntRange(1), default=1, show_default=True)
@click.option("--hold-seconds", type=click.IntRange(1), default=600, show_default=True,
              help="How long an unpaid hold lasts.")
@click.option("--starts-at", type=_When(), default=None, help="ISO 8601; default now.")
@click.option("--ends-at", type=_When(), default=None, help="ISO 8601; default open-ended.")
@json_option
def create(product_id, quantity, price, per_user_limit, hold_seconds, starts_at, ends_at,
           as_json) -> None:
    """Create a sale: move its units out of stock and pre-load its tokens."""
    row = run(with_sales(lambda s: s.create(
        product_id=product_id, quantity=quantity, price=price, starts_at=starts_at,
        ends_at=ends_at, per_user_limit=per_user_limit, hold_seconds=hold_seconds)))
    emit(row, as_json,
         f"sale {row['sale_id']} created: {row['quantity']} units of product "
         f"{row['product_id']} at {row['price']}, {row['per_user_limit']} per buyer, "
         f"holds last {row['hold_seconds']} s, starts {row['starts_at']:%Y-%m-%d %H:%M:%S%z}")


@sale.command("load-tokens")
@click.argument("sale_id", type=int)
@json_option
def load_tokens(sale_id: int, as_json: bool) -> None:
    """Finish loading the tokens of a sale left 'loading' by a crash (never loads twice)."""
    loaded = run(with_sales(lambda s: s.load_tokens(sale_id)))
    emit({"sale_id": sale_id, "loaded": loaded}, as_json,
         f"sale {sale_id}: {loaded} tokens loaded" if loaded else
         f"sale {sale_id}: tokens were already in Redis; marked ready")


@sale.command("status")
@click.argument("sale_id", type=int)
@json_option
def status(sale_id: int, as_json: bool) -> None:
    """Remaining, held, confirmed, expired, and how far the reconciler lags."""
    from reconciler.report import sale_status

    report = run(with_sales(lambda s: sale_status(s, sale_id)))
    lines = [f"sale {sale_id} ({report['status']}): product {report['product_id']} "
             f"at {report['price']}"]
    redis_books = report["redis"]
    if redis_books:
        lines.append("  redis:    remaining {tokens}  held {held}  confirmed {confirmed}  "
                     "(initial {initial})".format(**redis_books))
    else:
        lines.append("  redis:    no state (not loaded, cleaned up, or lost: see `sale recover`)")
    pg = report["postgres"]
    lines.append("  postgres: held {held}  confirmed {confirmed}  released {released}  "
                 "expired {expired}".format(**pg))
    lag = report["lag"]
    lines.append(f"  reconciler lag: {lag['pending']} events not yet in Postgres"
                 + (f", oldest {lag['oldest_age_seconds']:.1f} s" if lag["pending"] else ""))
    emit(report, as_json, "\n".join(lines))


@sale.command("recover")
@click.argument("sale_id", type=int)
@json_option
def recover(sale_id: int, as_json: bool) -> None:
    """Rebuild a sale's Redis state from Postgres after Redis lost it."""
    from reconciler.recovery import recover_sale

    result = run(with_sales(lambda s: recover_sale(s, sale_id)))
    emit(result, as_json,
         f"sale {sale_id} rebuilt: {result['tokens']} tokens, {result['held']} held in "
         f"{result['holds']} holds, {result['confirmed']} confirmed")
