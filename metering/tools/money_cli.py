"""What `credit` and `adjust` share: an amount (exact), a reason, an id that
makes a retry safe, and the answer printed."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from metering.money import format_usd
from metering.settings import Settings
from metering.store import Store
from metering.tools.connections import live_store
from metering.tools.output import EXIT_OK, add_amount_options, add_json_option, amount_micros, emit

# (store, account_id, id, amount_micros, reason) -> the domain's answer
Move = Callable[[Store, str, str, int, str], Awaitable[Any]]


def add_money_arguments(
    parser: argparse.ArgumentParser, doc: str | None, id_option: str, signed: bool
) -> None:
    parser.description = doc
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("account_id")
    add_amount_options(parser, signed=signed)
    parser.add_argument(
        "--reason", required=True, help="why (kept in the ledger entry; one line, 200 at most)"
    )
    parser.add_argument(
        id_option,
        default=None,
        help="its id: the same id again changes nothing more (default: a new id, printed)",
    )
    add_json_option(parser)


async def run_money(
    args: argparse.Namespace, settings: Settings, what: str, signed: bool, move: Move
) -> int:
    """Apply `move` once per id; print the balance after it."""
    amount = amount_micros(args, signed=signed)
    request_id = getattr(args, f"{what}_id") or f"cli-{uuid.uuid4().hex}"
    async with live_store(settings) as store:
        done = await move(store, args.account_id, request_id, amount, args.reason)
    out = {"account_id": args.account_id, f"{what}_id": request_id, "replayed": done.replayed}
    out.update(done.as_dict())
    verb = "already done (nothing more)" if done.replayed else "done"
    emit(
        args,
        out,
        f"{args.account_id}: {what} {request_id} of {format_usd(amount)} {verb}; balance "
        f"{format_usd(done.balance_micros)}, seq {done.seq}",
    )
    return EXIT_OK
