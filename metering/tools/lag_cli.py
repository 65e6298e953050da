"""`python -m metering lag`: ledger entries not yet in Postgres and the age of
the oldest, in all and per shard behind (the same figures as
GET /v1/ops/ledger-lag). `--max-age-ms` turns it into a check: exit 1 when the
oldest entry is older."""

from __future__ import annotations

import argparse

from metering.ledger.lag import ledger_lag
from metering.settings import Settings
from metering.tools.connections import live_store
from metering.tools.output import EXIT_DIFFERENCES, EXIT_OK, add_json_option, emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument(
        "--max-age-ms",
        type=int,
        default=None,
        help="exit 1 when the oldest unwritten entry is older than this",
    )
    add_json_option(parser)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with live_store(settings) as store:
        lag = await ledger_lag(store)
    out = lag.as_dict()
    behind = [s for s in lag.shards if s.entries_behind]
    lines = [
        f"ledger lag: {lag.entries_behind} entries not yet in Postgres; oldest "
        + (f"{lag.oldest_age_ms} ms" if lag.oldest_age_ms >= 0 else "-")
    ]
    lines += [
        f"  shard {s.shard}: {s.entries_behind} entries, oldest {s.oldest_age_ms} ms"
        for s in behind
    ]
    too_old = args.max_age_ms is not None and lag.oldest_age_ms > args.max_age_ms
    out["over_max_age"] = too_old
    emit(args, out, "\n".join(lines))
    return EXIT_DIFFERENCES if too_old else EXIT_OK
