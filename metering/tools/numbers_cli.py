"""`python -m metering numbers`: an account's phone numbers, every suspended
number, or release one (calls and texts naming it are refused from then on)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from metering import accounts
from metering.money import format_usd
from metering.numbers import inventory
from metering.settings import Settings
from metering.tools.accounts_cli import fmt_time
from metering.tools.connections import store_and_pool
from metering.tools.output import EXIT_OK, UsageError, add_json_option, emit, emit_rows

SUSPENDED_LISTED_MAX = 100_000
RELEASE_REASON_LENGTH_MAX = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="the account's numbers with status and renewal")
    listing.add_argument("account_id")
    listing.add_argument("--all", action="store_true", help="with released numbers too")
    add_json_option(listing)
    suspended = sub.add_parser("suspended", help="every suspended number, oldest first")
    suspended.add_argument("--limit", type=int, default=1_000, help="at most this many")
    add_json_option(suspended)
    release = sub.add_parser("release", help="release a number the account holds")
    release.add_argument("account_id")
    release.add_argument("number", help="E.164, e.g. +15550001111")
    release.add_argument("--reason", default="released by operations", help="kept with the number")
    add_json_option(release)


def number_line(n: dict[str, Any]) -> str:
    parts = [n.get("account_id", ""), n["number"], n["status"]]
    if n.get("recorded") is False:
        return "\t".join(p for p in [*parts, "(bought a moment ago, not recorded yet)"] if p)
    parts += [
        f"renewal {n['renewal']}",
        f"{format_usd(n['monthly_micros'])} a period",
        f"paid until {fmt_time(n['paid_until_us'])}",
    ]
    if n.get("release_at_us"):
        parts.append(f"released at {fmt_time(n['release_at_us'])} unless paid")
    return "\t".join(p for p in parts if p)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with store_and_pool(settings) as (store, pool):
        if args.action == "list":
            await accounts.get_account(store, args.account_id)
            numbers = await inventory.list_numbers(store, pool, args.account_id, args.all)
            emit_rows(args, numbers, number_line)
            return EXIT_OK
        if args.action == "suspended":
            if not 1 <= args.limit <= SUSPENDED_LISTED_MAX:
                raise UsageError(f"--limit must be between 1 and {SUSPENDED_LISTED_MAX}")
            rows = await inventory.suspended_numbers(pool, settings, args.limit)
            emit_rows(args, rows, number_line)
            return EXIT_OK
        if len(args.reason) > RELEASE_REASON_LENGTH_MAX:
            raise UsageError(f"--reason is longer than {RELEASE_REASON_LENGTH_MAX} characters")
        released = await inventory.release_number(
            store, pool, args.account_id, args.number, args.reason, time.time_ns() // 1_000
        )
    emit(
        args,
        {"account_id": args.account_id, **released},
        f"{args.account_id}: {args.number} released ({args.reason})",
    )
    return EXIT_OK
