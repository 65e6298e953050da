"""`python -m metering ledger replay`: a range of the Postgres ledger to stdout,
one entry per line as JSON (default) or CSV with a header.

    python -m metering ledger replay --account acme --from-seq 100 --to-seq 200
    python -m metering ledger replay --from 2026-11-01 --to 2026-11-30 --format csv

One account's entries come in seq order, every account's in time order. The
entries the writer has not moved into Postgres yet are not included (see
`python -m metering lag`). --limit bounds the output; the last line on stderr
says how many entries were written.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys

from metering import fields
from metering.errors import InvalidRequest
from metering.ledger.activity import parse_instant
from metering.ledger.database import connect
from metering.ledger.replay import SEQ_MAX, ReplayRange, replay
from metering.ledger_entries import LedgerEntry
from metering.settings import Settings
from metering.tools.output import EXIT_OK, UsageError, dumps

ROWS_DEFAULT = 1_000_000
ROWS_MAX = 1_000_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay_cmd = sub.add_parser(
        "replay",
        help="entries of a range, in order, to stdout",
        description="Entries of one account (seq order) or of all accounts (time order).",
    )
    replay_cmd.add_argument("--account", default=None, help="one account (default: all)")
    replay_cmd.add_argument("--from-seq", type=int, default=1, help="first seq (one account)")
    replay_cmd.add_argument("--to-seq", type=int, default=None, help="last seq (one account)")
    replay_cmd.add_argument(
        "--from", dest="from_", default=None, help="first day YYYY-MM-DD (UTC) or RFC 3339 instant"
    )
    replay_cmd.add_argument(
        "--to", default=None, help="last day YYYY-MM-DD (UTC, inclusive) or RFC 3339 instant"
    )
    replay_cmd.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    replay_cmd.add_argument(
        "--limit",
        type=int,
        default=ROWS_DEFAULT,
        help=f"at most this many (default {ROWS_DEFAULT})",
    )


def replay_range(args: argparse.Namespace) -> ReplayRange:
    if not 1 <= args.limit <= ROWS_MAX:
        raise UsageError(f"--limit must be between 1 and {ROWS_MAX}")
    if args.account is None and (args.from_seq != 1 or args.to_seq is not None):
        raise UsageError("--from-seq and --to-seq need --account (seqs are per account)")
    try:
        span = ReplayRange(
            account_id=fields.account_id(args.account, "--account") if args.account else None,
            from_seq=fields.integer(args.from_seq, "--from-seq", 1, SEQ_MAX),
            to_seq=SEQ_MAX
            if args.to_seq is None
            else fields.integer(args.to_seq, "--to-seq", 1, SEQ_MAX),
        )
        if args.from_:
            span = dataclasses.replace(span, from_us=parse_instant(args.from_, "--from", False))
        if args.to:
            span = dataclasses.replace(span, to_us=parse_instant(args.to, "--to", True))
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    if span.from_seq > span.to_seq or span.from_us > span.to_us:
        raise UsageError("the range is empty: its start is after its end")
    return span


async def run(args: argparse.Namespace, settings: Settings) -> int:
    span = replay_range(args)
    conn = await connect(settings)
    written = 0
    try:
        writer = None
        if args.format == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow([f.name for f in dataclasses.fields(LedgerEntry)])
        async for entry in replay(conn, span, args.limit):
            if writer is not None:
                writer.writerow(dataclasses.astuple(entry))
            else:
                sys.stdout.write(dumps(dataclasses.asdict(entry)) + "\n")
            written += 1
    finally:
        await conn.close()
        sys.stdout.flush()
    print(f"ledger replay: {written} entries", file=sys.stderr)
    return EXIT_OK
