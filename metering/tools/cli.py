"""`python -m metering`: the operator's command-line tool.

Each subcommand lives in its own module with `add_arguments(parser)` and
`async def run(args, settings) -> int` (the exit code); add it to COMMANDS.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from metering.settings import Settings, SettingsError

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("metering.ledger.migrate", "apply the Postgres migrations (safe to run twice)"),
    "sweep": ("metering.sweeper", "run the reservation sweeper on its own"),
    "recharge-worker": (
        "metering.payments.recharge_worker",
        "charge cards for automatic recharges, credit them, email failures",
    ),
    "number-scheduler": (
        "metering.numbers.scheduler",
        "renew phone numbers when due; suspend, retry and release unpaid ones",
    ),
    "notifier": (
        "metering.notify.notifier",
        "record account events, email low-balance alerts and notices, send webhooks",
    ),
    "ledger-writer": (
        "metering.ledger.writer",
        "move ledger entries from the shard streams into Postgres",
    ),
    "reconcile": (
        "metering.ledger.reconcile",
        "compare Redis balances and seqs with the Postgres ledger (exit 1 on any difference)",
    ),
    "accounts": (
        "metering.tools.accounts_cli",
        "list accounts, or create one (with a customer token)",
    ),
    "tokens": (
        "metering.tools.tokens_cli",
        "an account's customer tokens: list, issue, revoke one or all",
    ),
    "rebuild": (
        "metering.ledger.rebuild",
        "restore accounts, balances and tokens Redis lacks from Postgres",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metering",
        description="Operate the prepaid metering gateway. Settings come from METERING_* "
        "environment variables (see the README).",
    )
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(asyncio.run(modules[args.command].run(args, settings)))
    except KeyboardInterrupt:
        return 130
