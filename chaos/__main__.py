"""`python -m chaos [--quick] [--only TEXT] [--json]` (`make chaos`): run the fault
scenarios against real processes and print what each did to the acknowledged holds.

Every scenario gets its own private Redis (durability as the scenario says) on a free
port under .var/chaos/; Postgres is a private cluster there too when initdb/pg_ctl exist
(needed to stop it), otherwise a database ``<test db>_chaos`` on the configured server
(FLASHSALE_CHAOS_DATABASE_URL, else FLASHSALE_TEST_DATABASE_URL) and the Postgres-stop
scenario is skipped. Exit status 1 when any scenario breaks a promise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import asyncpg

from accounts.tokens import TokenSigner
from chaos.scenarios import FULL, QUICK, SCENARIOS, Outcome, run_scenario
from chaos.servers import PrivatePostgres
from chaos.stack import SECRET
from engine.connections import database_name, with_database
from engine.migrate import migrate

USERS = 80


def _fallback_url() -> str:
    url = os.environ.get("FLASHSALE_CHAOS_DATABASE_URL")
    if url:
        return url
    base = os.environ.get("FLASHSALE_TEST_DATABASE_URL",
                          "postgresql://postgres@127.0.0.1:5432/flashsale_test")
    return with_database(base, database_name(base) + "_chaos")


async def _fresh_database(url: str) -> None:
    admin = await asyncpg.connect(with_database(url, "postgres"), timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    finally:
        await admin.close()
    await migrate(url)


async def _users(url: str) -> dict[int, str]:
    conn = await asyncpg.connect(url)
    try:
        ids = [r["user_id"] for r in await conn.fetch(
            "INSERT INTO users (email, name, password_hash) SELECT 'chaos' || g ||"
            " '@example.com', 'Chaos ' || g, 'not-a-password' FROM generate_series(1, $1) g"
            " RETURNING user_id", USERS)]
    finally:
        await conn.close()
    signer = TokenSigner(secret=SECRET, ttl_seconds=24 * 3600)
    return {u: signer.issue(u, "customer") for u in ids}


def table(outcomes: list[Outcome]) -> str:
    head = ("scenario", "durability", "acknowledged", "lost", "reused ids", "oversold",
            "audit", "recover s", "result")
    rows = [head] + [(o.scenario, o.durability, str(o.acknowledged), str(o.lost),
                      str(o.reused), str(o.oversold), o.audit[:40] or "-",
                      f"{o.recover_seconds:.1f}",
                      "skipped" if o.skipped else ("ok" if o.ok else "FAILED"))
                     for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in outcomes:
        for note in o.notes:
            lines.append(f"  {o.scenario}: {note}")
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short scenarios (make test)")
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    postgres = PrivatePostgres("chaos") if PrivatePostgres.available() else None
    started = time.monotonic()
    try:
        if postgres is not None:
            postgres.start()
            url = postgres.url
        else:
            url = _fallback_url()
        await _fresh_database(url)
        tokens = await _users(url)
        outcomes = []
        for scenario in SCENARIOS:
            if args.only.lower() not in scenario.name.lower():
                continue
            if not args.json:
                print(f"== {scenario.name}", file=sys.stderr, flush=True)
            outcomes.append(await run_scenario(scenario, database_url=url, postgres=postgres,
                                               tokens=tokens, params=params))
    finally:
        if postgres is not None:
            postgres.remove()
    ok = all(o.ok for o in outcomes)
    if args.json:
        print(json.dumps({"ok": ok, "quick": args.quick, "seconds": round(
            time.monotonic() - started, 1), "scenarios": [o.as_dict() for o in outcomes]}))
    else:
        print(table(outcomes))
        print(f"\n{'all scenarios kept their promises' if ok else 'SOME SCENARIOS FAILED'} "
              f"({time.monotonic() - started:.0f} s, {'quick' if args.quick else 'full'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
