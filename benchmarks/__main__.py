"""``python -m benchmarks --quick`` (``make bench``) runs every comparison benchmark's
quick mode in turn and prints their tables; ``--full`` runs the full modes."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

SUITE = ("admission", "admission_strategies", "gateway", "cluster", "reconciler", "catalog",
         "checkout", "waiting_room")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="quick modes (default)")
    group.add_argument("--full", action="store_true", help="full modes (long)")
    parser.add_argument("only", nargs="*", metavar="NAME",
                        help=f"run only these (of {', '.join(SUITE)})")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SUITE)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    flag = "--full" if args.full else "--quick"
    failed = []
    for name in args.only or SUITE:
        print(f"\n=== benchmarks.{name} {flag}", flush=True)
        started = time.perf_counter()
        try:
            code = importlib.import_module(f"benchmarks.{name}").main([flag])
        except Exception as exc:  # one broken benchmark must not hide the others' tables
            print(f"benchmarks.{name} failed: {type(exc).__name__}: {exc}")
            code = 1
        if code:
            failed.append(name)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
