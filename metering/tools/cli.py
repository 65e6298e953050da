"""`python -m metering`: the operator's command-line tool.

Each subcommand lives in its own module with `add_arguments(parser)` and
`async def run(args, settings) -> int` (the exit code); add it to COMMANDS.
Only the module of the command being run is imported (the workers' modules pull
in Stripe and more), so `--help` and quick commands start fast.

Exit codes (the README lists them; scripts may rely on them):

    0    done
    1    a check found differences (reconcile)
    2    usage or configuration: bad arguments, an unreadable input file, a bad
         METERING_* setting, a database without its migrations
    3    a server did not answer (Redis, Postgres, Stripe); retry later
    4    refused: the input is invalid or the service said no (unknown account,
         a field out of range, an idempotency conflict, insufficient funds)
    70   an unexpected error (a bug): the message says so; --log-level debug
         prints the traceback
    130  interrupted (Ctrl-C)

With --json, a command prints JSON on stdout: one document, or one object per
line for listings; an error is then `{"error": <code>, "message": <sentence>}`
on stdout too (and the exit code above).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from metering.logs import configure_logging
from metering.settings import Settings, SettingsError
from metering.tools.output import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
    describe_failure,
    print_error,
)

log = logging.getLogger("metering.cli")

# name -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("metering.ledger.migrate", "apply the Postgres migrations (safe to run twice)"),
    "sweep": ("metering.tools.sweep", "run the reservation sweeper on its own"),
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
    "rebuild": (
        "metering.ledger.rebuild",
        "restore accounts, balances and tokens Redis lacks from Postgres",
    ),
    "accounts": (
        "metering.tools.accounts_cli",
        "list, show, create or import (CSV) accounts",
    ),
    "credit": (
        "metering.tools.credit_cli",
        "add funds to an account, with a reason (an ops credit, idempotent by --credit-id)",
    ),
    "adjust": (
        "metering.tools.adjust_cli",
        "correct a balance up or down, with a reason (idempotent by --adjustment-id)",
    ),
    "tokens": (
        "metering.tools.tokens_cli",
        "an account's customer tokens: list, issue, revoke one or all",
    ),
    "recharge": (
        "metering.tools.recharge_cli",
        "show an account's automatic recharge, turn it off, or lower its amounts",
    ),
    "numbers": (
        "metering.tools.numbers_cli",
        "list an account's phone numbers, the suspended ones, or release one",
    ),
    "lag": ("metering.tools.lag_cli", "how far the Postgres ledger is behind Redis"),
    "ledger": (
        "metering.tools.ledger_cli",
        "replay a range of the Postgres ledger to stdout (JSON lines or CSV)",
    ),
}


# Long-running workers: a heartbeat and a metrics port around their loop
# (metering/tools/worker_process.py). reconcile is one only with --continuous.
WORKERS = frozenset(
    {"ledger-writer", "recharge-worker", "number-scheduler", "notifier", "sweep", "reconcile"}
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: every command named with its help, none imported."""
    parser = argparse.ArgumentParser(
        prog="python -m metering",
        description="Operate the prepaid metering gateway. Settings come from METERING_* "
        "environment variables (see the README). Exit codes: 0 done, 1 differences found, "
        "2 usage or configuration, 3 a server did not answer, 4 refused, 70 unexpected "
        "error, 130 interrupted.",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="log level of this command (default info; third-party libraries log at "
        "warning unless this is debug)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, Any]:
    """The full parser of one command, its module imported."""
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"python -m metering {name}", description=help_text[0].upper() + help_text[1:] + "."
    )
    module.add_arguments(parser)
    if name in WORKERS:
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve /metrics and /livez on this port (default "
            "METERING_WORKER_METRICS_PORT; 0: none)",
        )
    return parser, module


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Any]:
    top = build_parser()
    known, rest = top.parse_known_args(argv)
    parser, module = command_parser(known.command)
    args = parser.parse_args(rest)
    args.command = known.command
    args.log_level = known.log_level
    return args, module


async def _run(module: Any, args: argparse.Namespace, settings: Settings) -> int:
    work = module.run(args, settings)
    if args.command not in WORKERS or not getattr(args, "continuous", True):
        return int(await work)
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    if not 0 <= port <= 65_535:
        work.close()
        raise UsageError(f"--metrics-port {port} is not a port")
    # Imported here: uvicorn and Starlette only for the workers.
    from metering.tools.worker_process import run_worker

    try:
        return await run_worker(args.command, work, settings, port)
    except UsageError:
        work.close()
        raise


def main(argv: list[str] | None = None) -> int:
    args, module = parse(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
        configure_logging(args.log_level, settings)
    except SettingsError as exc:
        print_error(args, "settings", str(exc))
        return EXIT_USAGE
    except ValueError as exc:  # a bad --log-level
        print_error(args, "usage", str(exc))
        return EXIT_USAGE
    try:
        return int(asyncio.run(_run(module, args, settings)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        code, exit_code, message = describe_failure(exc)
        if exit_code == EXIT_INTERNAL:
            log.debug("unexpected error in %s", args.command, exc_info=exc)
        print_error(args, code, message)
        return exit_code
