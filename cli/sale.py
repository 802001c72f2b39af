"""flashsale sale create | list | status | pause | resume | end | load-tokens | recover

Every command that shows a sale prints its board: the same fields as the admin API's
SaleBoard (`GET /api/v1/admin/sales/{id}`), ISO 8601 UTC times, money as strings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import click

from cli.common import CommandError, emit, json_option, run, to_builtins, with_sales

STATUSES = ("scheduled", "active", "paused", "sold_out", "ended")
# A start this far in the past is a typo, not "now" (clocks and typing take a moment).
PAST_TOLERANCE = timedelta(minutes=1)


class _Money(click.ParamType):
    name = "amount"

    def convert(self, value, param, ctx) -> Decimal:
        from engine.money import check_amount
        try:
            return check_amount(Decimal(str(value)))
        except (InvalidOperation, ValueError) as exc:
            self.fail(f"{value!r} is not an amount like 19.99 ({exc})", param, ctx)


class _When(click.ParamType):
    """An ISO 8601 time with its zone: a time without one is refused, not guessed."""
    name = "time"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time like 2026-11-27T09:00:00Z", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no time zone; add Z for UTC or an offset like "
                      f"+01:00 (e.g. {moment.isoformat()}Z)", param, ctx)
        return moment.astimezone(UTC)


def _board_text(b: dict) -> str:
    window = f"{b['starts_at']} -> {b['ends_at'] or 'open-ended (stop it with `sale end`)'}"
    books = ("balanced" if b["books_balanced"]
             else f"MISMATCH by {b['books_mismatch_units']} units (run `flashsale audit "
                  f"{b['sale_id']}`)")
    return "\n".join([
        f"sale {b['sale_id']} ({b['status']}): {b['product_name']} (product "
        f"{b['product_id']}) at {b['price']}",
        f"  window:     {window}",
        f"  limits:     {b['per_user_limit']} per buyer, holds last {b['hold_seconds']} s",
        f"  units:      initial {b['initial']}  remaining {b['remaining']}  held {b['held']}"
        f"  confirmed {b['confirmed']}  released {b['released']}  expired {b['expired']}",
        *([f"  buckets:    {b['buckets']} (units summed over them; {b['in_transit']} moving "
           "between two)"] if b.get("buckets", 1) > 1 else []),
        f"  admitted:   {b['admissions_total']} units so far (as applied to Postgres)",
        f"  reconciler: {b['reconciler_lag']} events not yet in Postgres",
        f"  books:      {books}",
        *([f"  set aside:  {b['dead_letters']} events Postgres refused (sale_dead_letters), "
           f"{b['conflicts']} reused-id conflicts (sale_event_conflicts)"]
          if b.get("dead_letters") or b.get("conflicts") else []),
        *_room_lines(b.get("waiting_room"))])


def _room_lines(room: dict | None) -> list[str]:
    if not room:
        return []
    wait = room["estimated_wait_seconds"]
    return [f"  waiting room: {room['waiting']} waiting  {room['passes_live']} passes live  "
            f"{room['admitted']} admitted  {room['told_sold_out']} told sold out  last in "
            f"line waits {'unknown' if wait is None else f'~{wait} s'}"]


async def _status_of(sales, sale_id: int) -> dict:
    """The board, plus what the reconciler set aside for the sale (dead letters and
    reused-id conflicts: the audit fails on them until an operator deals with them)."""
    from reconciler.report import parked

    return {**to_builtins(await _board_of(sales, sale_id)), **await parked(sales, sale_id)}


async def _board_of(sales, sale_id: int):
    from engine.errors import NotFound
    from reconciler.board import sale_board

    board = await sale_board(sales, sale_id)
    if board is None:
        raise NotFound(f"No sale {sale_id}.")
    return board


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
@click.option("--starts-at", type=_When(), default=None,
              help="ISO 8601 with a zone (2026-11-27T09:00:00Z); default now.")
@click.option("--ends-at", type=_When(), default=None,
              help="ISO 8601 with a zone; default open-ended (until `sale end`).")
@click.option("--idempotency-key", default=None,
              help="Repeat the command with the same key to get the same sale, never two.")
@click.option("--allow-free", is_flag=True, help="Accept a price of 0.")
@click.option("--buckets", type=int, default=1, show_default=True,
              help="Split the tokens over this many Redis buckets (slots), so that many "
                   "cluster masters share one hot product (1-64, at most --quantity).")
@click.option("--waiting-room", is_flag=True,
              help="Buyers queue for passes that follow the stock (see README).")
@click.option("--admission-rate", type=click.IntRange(1, 100_000), default=None,
              help="Waiting room: passes per second (default 50).")
@click.option("--pass-seconds", type=click.IntRange(10, 3600), default=None,
              help="Waiting room: a pass's lifetime (default 120).")
@click.option("--pass-margin", type=click.IntRange(0, 1000), default=None,
              help="Waiting room: percent by which unused passes may exceed the units left "
                   "(default 0).")
@json_option
def create(product_id, quantity, price, per_user_limit, hold_seconds, starts_at, ends_at,
           idempotency_key, allow_free, buckets, waiting_room, admission_rate, pass_seconds,
           pass_margin, as_json) -> None:
    """Create a sale: move its units out of stock and pre-load its tokens."""
    from engine.waiting_room import RoomConfig

    tuning = {k: v for k, v in (("admission_rate", admission_rate),
                                ("pass_seconds", pass_seconds),
                                ("pass_margin_percent", pass_margin)) if v is not None}
    if tuning and not waiting_room:
        raise CommandError("--admission-rate, --pass-seconds and --pass-margin need "
                           "--waiting-room.", code="validation_failed")
    room = RoomConfig(**tuning) if waiting_room else None
    from engine.errors import ValidationFailed
    from engine.sale_records import check_buckets
    try:
        check_buckets(buckets, quantity)
    except ValidationFailed as exc:
        raise CommandError(f"--buckets {buckets}: {exc.details[0]['message']}.",
                           code="validation_failed") from None
    if price == 0 and not allow_free:
        raise CommandError("--price is 0: the units would be given away; pass --allow-free "
                           "if that is meant.", code="validation_failed")
    if starts_at is not None and starts_at < datetime.now(UTC) - PAST_TOLERANCE:
        raise CommandError(f"--starts-at {starts_at.isoformat()} is in the past; leave it out "
                           "to start now.", code="validation_failed")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 100
                                            and idempotency_key.isprintable()):
        raise CommandError("--idempotency-key must be 1-100 printable characters.",
                           code="validation_failed")

    async def work(sales):
        row = await sales.create(
            product_id=product_id, quantity=quantity, price=price, starts_at=starts_at,
            ends_at=ends_at, per_user_limit=per_user_limit, hold_seconds=hold_seconds,
            idempotency_key=idempotency_key, waiting_room=room, buckets=buckets)
        return row["replayed"], await _board_of(sales, row["sale_id"])

    replayed, board = run(with_sales(work))
    data = to_builtins(board)
    head = (f"sale {board.sale_id} was already created with this idempotency key; nothing "
            "changed" if replayed else f"sale {board.sale_id} created")
    warning = "" if ends_at else "\n  note: no --ends-at: the sale runs until `flashsale sale end`"
    emit(data, as_json, f"{head}\n{_board_text(data)}{warning}")


@sale.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 1000), default=500, show_default=True,
              help="Look at the newest this many sales.")
@json_option
def list_sales(status: str | None, limit: int, as_json: bool) -> None:
    """Sales, newest first, with their books and lag (same fields as the admin API)."""
    from reconciler.board import sale_boards

    boards = [to_builtins(b) for b in run(with_sales(
        lambda s: sale_boards(s, status=status, limit=limit)))]
    header = (f"{'sale':>6}  {'status':<9} {'product':<24} {'price':>9} {'remaining':>9} "
              f"{'held':>6} {'confirmed':>9} {'lag':>5}  books")
    rows = [f"{b['sale_id']:>6}  {b['status']:<9} {b['product_name'][:24]:<24} "
            f"{b['price']:>9} {b['remaining']:>9} {b['held']:>6} {b['confirmed']:>9} "
            f"{b['reconciler_lag']:>5}  "
            f"{'ok' if b['books_balanced'] else 'MISMATCH ' + str(b['books_mismatch_units'])}"
            for b in boards]
    emit({"items": boards}, as_json, "\n".join([header, *rows]) if rows else "no sales")


def _watch(sale_id: int, interval: float) -> None:
    """Redraw the board every ``interval`` seconds, with admissions per second."""
    import asyncio
    import time

    async def loop(sales) -> None:
        previous: tuple[float, int] | None = None
        while True:
            board = to_builtins(await _board_of(sales, sale_id))
            now = time.monotonic()
            rate = ""
            if previous is not None and now > previous[0]:
                per_second = (board["admissions_total"] - previous[1]) / (now - previous[0])
                rate = f"  admissions/s: {per_second:.1f}"
            previous = (now, board["admissions_total"])
            click.clear()
            click.echo(f"{_board_text(board)}\n{rate}\n(every {interval:g} s; Ctrl-C to stop)")
            if board["status"] == "ended" and not board["held"] and not board["reconciler_lag"]:
                return
            await asyncio.sleep(interval)

    try:
        run(with_sales(loop))
    except KeyboardInterrupt:
        pass


@sale.command("status")
@click.argument("sale_id", type=int)
@click.option("--watch", is_flag=True, help="A live view: redraw until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.2), default=1.0, show_default=True,
              help="Seconds between redraws with --watch.")
@json_option
def status(sale_id: int, watch: bool, interval: float, as_json: bool) -> None:
    """Window, limits, units by state, reconciler lag and the books of a sale."""
    if watch:
        if as_json:
            raise CommandError("--watch draws a live view; leave out --json",
                               code="validation_failed")
        _watch(sale_id, interval)
        return
    board = run(with_sales(lambda s: _status_of(s, sale_id)))
    emit(board, as_json, _board_text(board))


def _change(sale_id: int, action: str, as_json: bool, done: str) -> None:
    async def work(sales):
        await sales.change_state(sale_id, action)
        return await _board_of(sales, sale_id)

    board = to_builtins(run(with_sales(work)))
    emit(board, as_json, f"sale {sale_id} {done}\n{_board_text(board)}")


@sale.command("pause")
@click.argument("sale_id", type=int)
@json_option
def pause(sale_id: int, as_json: bool) -> None:
    """Stop admitting buyers (409 sale_not_active); holds can still be paid."""
    _change(sale_id, "pause", as_json, "paused: reservations answer 409 sale_not_active")


@sale.command("resume")
@click.argument("sale_id", type=int)
@json_option
def resume(sale_id: int, as_json: bool) -> None:
    """Admit buyers again after a pause."""
    _change(sale_id, "resume", as_json, "resumed")


@sale.command("end")
@click.argument("sale_id", type=int)
@json_option
def end(sale_id: int, as_json: bool) -> None:
    """End a sale now; its unsold units return to stock once the reconciler drains it."""
    _change(sale_id, "end", as_json, "ended: unsold units return to stock once its holds "
            "are resolved and the reconciler has applied its events")


@sale.command("load-tokens")
@click.argument("sale_id", type=int)
@json_option
def load_tokens(sale_id: int, as_json: bool) -> None:
    """Finish loading the tokens of a sale left 'loading' by a crash (never loads twice)."""
    loaded = run(with_sales(lambda s: s.load_tokens(sale_id)))
    emit({"sale_id": sale_id, "loaded": loaded}, as_json,
         f"sale {sale_id}: {loaded} tokens loaded" if loaded else
         f"sale {sale_id}: tokens were already in Redis; marked ready")


@sale.command("recover")
@click.argument("sale_id", type=int)
@click.option("--force", is_flag=True,
              help="Rebuild even though Redis still has the sale (it diverged: see `audit`). "
                   "Stops admissions, waits for the reconciler to drain, rebuilds.")
@click.option("--wait", "wait_seconds", type=click.FloatRange(0), default=30.0,
              show_default=True, help="With --force: seconds to wait for the drain.")
@json_option
def recover(sale_id: int, force: bool, wait_seconds: float, as_json: bool) -> None:
    """Rebuild a sale's Redis state from Postgres after Redis lost it (or, with --force,
    diverged from it)."""
    from reconciler.recovery import recover_sale

    result = run(with_sales(lambda s: recover_sale(s, sale_id, force=force,
                                                   wait_seconds=wait_seconds)))
    text = (f"sale {sale_id} rebuilt: {result['tokens']} tokens, {result['held']} held in "
            f"{result['holds']} holds, {result['confirmed']} confirmed")
    if result["forced"]:
        text += (f"; {result['restored_to_redis']} reservations restored to Redis, "
                 f"{result['dropped_from_redis']} that Postgres never had dropped")
    emit(result, as_json, text)
