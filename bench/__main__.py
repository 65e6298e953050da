"""`python -m bench [NAME ...] [--seconds N] [--smoke]`: run the scenarios, print
the table, the ratios and the targets, and write bench/results/<date>-<commit>.json."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
from pathlib import Path

from bench import report
from bench.scenarios import SCENARIOS, Run
from devkit.testing import RedisServer
from metering.ledger.migrate import migrate

DEFAULT_SECONDS = 10
SMOKE_SECONDS = 1
SPREAD_ACCOUNTS = 10_000
SMOKE_SPREAD_ACCOUNTS = 500
DEFAULT_CONNECTIONS = 32
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/metering_bench"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--seconds",
        type=int,
        default=None,
        help=f"measured seconds per run (default {DEFAULT_SECONDS})",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds in all: proves the harness works, measures nothing",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help="keep-alive connections (closed loop) / tasks",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("METERING_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="Postgres database for postgres-row-lock (created if missing; the bench "
        "uses only its own bench_* tables)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=Path(__file__).resolve().parent / "results"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seconds = args.seconds or (SMOKE_SECONDS if args.smoke else DEFAULT_SECONDS)
    names = args.names or list(SCENARIOS)
    machine = report.machine()
    started = time.monotonic()
    # The gateway refuses to start on a database that lacks its migrations.
    asyncio.run(migrate(args.database_url, create_database=True))
    redis = RedisServer()
    run = Run(
        seconds=seconds,
        warmup_s=0 if args.smoke else 1,
        connections=args.connections,
        spread_accounts=SMOKE_SPREAD_ACCOUNTS if args.smoke else SPREAD_ACCOUNTS,
        database_url=args.database_url,
        redis=redis,
    )
    failed = []
    try:
        for name in names:
            print(f"{name}:", flush=True)
            try:
                SCENARIOS[name](run)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                failed.append(name)
                run.results.append(
                    {
                        "key": "",
                        "scenario": name,
                        "variant": "(all)",
                        "status": "skipped",
                        "reason": f"failed: {exc!r}"[:300],
                    }
                )
                print(f"  {name} failed: {exc!r}", file=sys.stderr, flush=True)
    finally:
        redis.stop()
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": report.commit(),
        "machine": machine,
        "seconds_per_run": seconds,
        "connections": args.connections,
        "spread_accounts": run.spread_accounts,
        "smoke": args.smoke,
        "wall_seconds": round(time.monotonic() - started, 1),
        "results": run.results,
        "ratios": report.ratios(run.results),
        "targets": report.targets(run.results),
    }
    print()
    print(report.summary(result))
    path = report.write(result, args.results_dir, args.smoke)
    print(f"\nwrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
