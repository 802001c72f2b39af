"""flashsale audit"""

from __future__ import annotations

import sys

import click

from cli.common import emit, json_option, run, with_sales


@click.command()
@click.argument("sale_id", type=int, required=False)
@click.option("--wait", "wait_seconds", type=click.FloatRange(0), default=10.0,
              show_default=True, help="Seconds to wait for the reconciler to drain.")
@json_option
def audit(sale_id: int | None, wait_seconds: float, as_json: bool) -> None:
    """Check the stock invariant in Redis and against Postgres; exit 1 on any mismatch."""
    from reconciler.audit import audit as run_audit

    reports = run(with_sales(lambda s: run_audit(s, sale_id, wait_seconds=wait_seconds)))
    ok = all(r.ok for r in reports)
    lines = []
    for r in reports:
        head = f"sale {r.sale_id}: {'OK' if r.ok else 'MISMATCH'}"
        if r.redis:
            head += (" (initial {initial} = tokens {tokens} + held {held} + confirmed "
                     "{confirmed})").format(**r.redis)
        lines.append(head)
        if r.reservations:
            c = r.reservations
            lines.append(f"  reservations: {c['compared']} in both, {c['differ']} differ, "
                         f"{c['lost_in_redis']} lost in Redis, {c['unseen_by_postgres']} "
                         "unseen by Postgres")
        lines.extend(f"  - {p}" for p in r.problems)
    if not reports:
        lines.append("no sales to audit")
    emit({"ok": ok, "sales": [r.as_dict() for r in reports]}, as_json, "\n".join(lines))
    sys.exit(0 if ok else 1)
