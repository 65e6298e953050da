"""`python -m metering recharge`: an account's automatic recharge.

`show` prints the saved settings (Postgres, the durable copy) and the live
state (pending, last failure). `off` turns automatic recharge off. `set`
changes the amount, the threshold or the failure email, under the same rules
as the dashboard (amount above 50 USD, threshold at least 10 USD and below
the amount), and only in the direction that charges less: charging a card is
the card holder's act, so an operator may lower the amount or the threshold
and turn recharge off, never turn it on or raise either (exit 4, nothing
changed). The customer changes those on the dashboard.
"""

from __future__ import annotations

import argparse
import dataclasses

from metering import accounts
from metering.errors import InvalidRequest
from metering.money import format_usd
from metering.payments import recharge_settings
from metering.payments.recharge_settings import RechargeSettings
from metering.settings import Settings
from metering.tools.accounts_cli import fmt_time
from metering.tools.connections import store_and_pool
from metering.tools.output import EXIT_OK, UsageError, add_json_option, emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="saved settings and live state")
    show.add_argument("account_id")
    add_json_option(show)
    off = sub.add_parser("off", help="turn automatic recharge off")
    off.add_argument("account_id")
    add_json_option(off)
    change = sub.add_parser("set", help="lower the amount or threshold, change the failure email")
    change.add_argument("account_id")
    change.add_argument("--amount-micros", type=int, help="the new (lower) recharge amount")
    change.add_argument("--threshold-micros", type=int, help="the new (lower) threshold")
    change.add_argument("--failure-email", help="where failures are emailed")
    add_json_option(change)


def settings_text(account_id: str, saved: RechargeSettings | None, live: dict[str, object]) -> str:
    if saved is None:
        return f"{account_id}: automatic recharge never set"
    text = (
        f"{account_id}: automatic recharge {'on' if saved.enabled else 'off'}: "
        f"{format_usd(saved.amount_micros)} when available < "
        f"{format_usd(saved.threshold_micros)}; failures emailed to {saved.failure_email}"
    )
    if live.get("pending"):
        text += f"\n  pending since {fmt_time(live.get('pending_since_us'))}"  # type: ignore[arg-type]
    if live.get("last_failure"):
        text += (
            f"\n  last failure {fmt_time(live.get('last_failure_at_us'))}: "  # type: ignore[arg-type]
            f"{live['last_failure']}"
        )
    return text


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with store_and_pool(settings) as (store, pool):
        view = await accounts.get_account(store, args.account_id)
        saved = await recharge_settings.saved_settings(pool, args.account_id)
        if args.action == "off" and saved is not None and saved.enabled:
            await recharge_settings.turn_off(store, pool, args.account_id)
            saved = dataclasses.replace(saved, enabled=False)
        elif args.action == "set":
            if saved is None:
                raise InvalidRequest(
                    "account_id",
                    f"account {args.account_id} has no recharge settings to change; "
                    "the customer sets them on the dashboard",
                )
            if (
                args.amount_micros is None
                and args.threshold_micros is None
                and (args.failure_email is None)
            ):
                raise UsageError("give --amount-micros, --threshold-micros or --failure-email")
            wanted = dataclasses.replace(
                saved,
                amount_micros=saved.amount_micros
                if args.amount_micros is None
                else args.amount_micros,
                threshold_micros=saved.threshold_micros
                if args.threshold_micros is None
                else args.threshold_micros,
                failure_email=saved.failure_email
                if args.failure_email is None
                else args.failure_email,
            )
            refusal = recharge_settings.operator_refusal(saved, wanted)
            if refusal:
                raise InvalidRequest("recharge", refusal)
            saved = await recharge_settings.save_settings(
                store, pool, args.account_id, wanted.as_dict()
            )
        view = await accounts.get_account(store, args.account_id)
    out = {"account_id": args.account_id, "saved": saved.as_dict() if saved else None}
    out["live"] = view.recharge
    emit(args, out, settings_text(args.account_id, saved, view.recharge))
    return EXIT_OK
