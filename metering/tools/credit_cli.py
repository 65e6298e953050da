"""`python -m metering credit ACCOUNT --amount-usd 25 --reason "..."`: an ops
credit, as `POST /v1/accounts/{id}/credits` makes it (ledger item "adding funds",
source ops_credit, the reason in the entry's detail).

A credit is idempotent by its id within the idempotency window: give
`--credit-id` to make a retry safe; without it a new id is made and printed.
"""

from __future__ import annotations

import argparse
import uuid

from metering import credits
from metering.money import format_usd
from metering.settings import Settings
from metering.tools.connections import live_store
from metering.tools.output import EXIT_OK, add_amount_options, add_json_option, amount_micros, emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("account_id")
    add_amount_options(parser, signed=False)
    parser.add_argument(
        "--reason", required=True, help="why (kept in the ledger entry; one line, 200 at most)"
    )
    parser.add_argument(
        "--credit-id",
        default=None,
        help="the credit's id: the same id again credits nothing more (default: a new id)",
    )
    add_json_option(parser)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    amount = amount_micros(args, signed=False)
    credit_id = args.credit_id or f"cli-{uuid.uuid4().hex}"
    async with live_store(settings) as store:
        credit = await credits.add_funds(
            store, args.account_id, credit_id, amount, "ops_credit", args.reason
        )
    out = {"account_id": args.account_id, "credit_id": credit_id, "replayed": credit.replayed}
    out.update(credit.as_dict())
    verb = "already credited (nothing more)" if credit.replayed else "credited"
    emit(
        args,
        out,
        f"{args.account_id}: {verb} {format_usd(credit.credited_micros)} as credit "
        f"{credit_id}; balance {format_usd(credit.balance_micros)}, seq {credit.seq}",
    )
    return EXIT_OK
