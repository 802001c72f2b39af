"""flashsale sale parked: what the reconciler set aside for a sale, retried or resolved."""

from __future__ import annotations

import sys

import click

from cli.common import CommandError, emit, json_option, run, to_builtins, with_sales


def _first_line(text: str) -> str:
    """Postgres's message without its DETAIL lines (--json has them)."""
    return text.splitlines()[0] if text else ""


def _item_line(item: dict) -> str:
    kind = "dead letter" if item["kind"] == "dead_letter" else "conflict"
    lines = [f"  {item['ref']}  {kind}  bucket {item['bucket']}  entry {item['stream_id']}  "
             f"parked {item['parked_at'][:19]}Z",
             f"      event: {item['event']}",
             f"      why:   {_first_line(item['why'])}"]
    if item["resolved_at"]:
        lines.append(f"      resolved {item['resolved_at'][:19]}Z: {item['resolution']}")
    return "\n".join(lines)


def _listing(sale_id: int, items: list[dict]) -> str:
    open_items = [i for i in items if not i["resolved_at"]]
    head = (f"sale {sale_id}: {sum(i['kind'] == 'dead_letter' for i in open_items)} dead "
            f"letters, {sum(i['kind'] == 'conflict' for i in open_items)} conflicts open")
    if not items:
        return f"{head}; nothing parked"
    hint = ("\n(retry dead letters once their cause is fixed: --retry; record what you did "
            "about any: --resolve REF --reason TEXT)" if open_items else "")
    return "\n".join([head, *map(_item_line, items)]) + hint


@click.command("parked")
@click.argument("sale_id", type=int)
@click.option("--retry", is_flag=True,
              help="Apply the sale's open dead letters again (after fixing their cause).")
@click.option("--resolve", "refs", multiple=True, metavar="REF",
              help="Record a dead letter (d<id>) or a conflict (c<id>) as dealt with by "
                   "hand; repeat for several. Needs --reason.")
@click.option("--reason", default=None, help="What was done, for --resolve.")
@click.option("--all", "show_all", is_flag=True, help="List resolved ones too.")
@json_option
def parked(sale_id: int, retry: bool, refs: tuple[str, ...], reason: str | None,
           show_all: bool, as_json: bool) -> None:
    """Events the reconciler set aside for SALE_ID: dead letters (Postgres refused them)
    and reused-id conflicts. Both fail `flashsale audit` until retried or resolved; rows
    are kept as the record. With --retry or --resolve, exits 1 when any stays open."""
    from reconciler import parked as store

    if retry and refs:
        raise CommandError("--retry and --resolve are separate steps; run one, then the "
                           "other.", code="validation_failed")
    if bool(refs) != (reason is not None):
        raise CommandError("--resolve REF needs --reason TEXT (and --reason goes with "
                           "--resolve).", code="validation_failed")

    def progress(done: int, total: int) -> None:
        if not as_json and sys.stderr.isatty() and (done == total or done % 50 == 0):
            click.echo(f"\rretried {done}/{total}", nl=done == total, err=True)

    async def work(sales):
        pool = sales.pool
        outcome = None
        if retry:
            outcome = to_builtins(await store.retry_dead_letters(pool, sale_id, progress))
        elif refs:
            outcome = {"resolved": await store.resolve(pool, sale_id, list(refs), reason)}
        items = await store.parked_items(pool, sale_id, resolved=show_all)
        if not items and not await pool.fetchval(
                "SELECT true FROM flash_sales WHERE sale_id = $1", sale_id):
            from engine.errors import NotFound
            raise NotFound(f"No sale {sale_id}.")
        return outcome, [to_builtins(i) for i in items]

    outcome, items = run(with_sales(work))
    listing = _listing(sale_id, items)
    if outcome is None:
        emit({"sale_id": sale_id, "items": items}, as_json, listing)
        return
    if retry:
        lines = [f"retried: {len(outcome['applied'])} done"
                 + (f" ({', '.join(outcome['applied'])})" if outcome["applied"] else ""),
                 *(f"  {ref} still refused: {_first_line(error)}" for ref, error in
                   outcome["refused"].items()),
                 *(f"  {ref} not retried: {why}" for ref, why in outcome["skipped"].items())]
    else:
        done = outcome["resolved"]
        lines = [f"resolved: {', '.join(done) if done else 'none (all were resolved already)'}"]
    emit({"sale_id": sale_id, **outcome, "items": items}, as_json,
         "\n".join([*lines, listing]))
    still_open = any(not i["resolved_at"] for i in items)
    sys.exit(1 if still_open else 0)
