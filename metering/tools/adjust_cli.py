"""`python -m metering adjust ACCOUNT --amount-usd -4.20 --reason "..."`: correct a
balance that is wrong, up or down, with a reason (ledger items "balance
adjustment (added)" / "(taken)", the reason in the entry's detail).

A negative adjustment never takes money reserved for open calls and is refused
(exit 4) beyond the available balance; no adjustment asks for an automatic
recharge. Idempotent by `--adjustment-id` within the idempotency window;
without it a new id is made and printed.
"""

from __future__ import annotations

import argparse
import uuid

from metering import adjustments
from metering.money import format_usd
from metering.settings import Settings
from metering.tools.connections import live_store
from metering.tools.output import EXIT_OK, add_amount_options, add_json_option, amount_micros, emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("account_id")
    add_amount_options(parser, signed=True)
    parser.add_argument(
        "--reason", required=True, help="why (kept in the ledger entry; one line, 200 at most)"
    )
    parser.add_argument(
        "--adjustment-id",
        default=None,
        help="the adjustment's id: the same id again changes nothing more (default: a new id)",
    )
    add_json_option(parser)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    amount = amount_micros(args, signed=True)
    adjustment_id = args.adjustment_id or f"cli-{uuid.uuid4().hex}"
    async with live_store(settings) as store:
        done = await adjustments.adjust_balance(
            store, args.account_id, adjustment_id, amount, args.reason
        )
    out = {"account_id": args.account_id, "adjustment_id": adjustment_id, "replayed": done.replayed}
    out.update(done.as_dict())
    verb = "already adjusted (nothing more)" if done.replayed else "adjusted"
    emit(
        args,
        out,
        f"{args.account_id}: {verb} by {format_usd(done.amount_micros)} as adjustment "
        f"{adjustment_id}; balance {format_usd(done.balance_micros)}, seq {done.seq}",
    )
    return EXIT_OK
