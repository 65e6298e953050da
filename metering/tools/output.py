"""What the operator's commands print, and the exit codes (metering/tools/cli.py).

A command prints text for people, or with --json a JSON document (one object
per line for listings) for scripts. Errors go through one table, so every
command answers a bad input, an unknown account or a server that is down with
one line and the same exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import decimal
import pathlib
import sys
from collections.abc import Iterable
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering.errors import DatabaseNotMigrated, InvalidRequest, MeteringError, Unavailable
from metering.money import CREDIT_MICROS_MAX, MICROS_PER_USD

EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_REFUSED = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

# A file an operator hands a command (a rate card, a CSV): read whole, so bounded.
INPUT_FILE_BYTES_MAX = 64 * 1024 * 1024


class UsageError(Exception):
    """The command line cannot be carried out as given (a missing file, a bad
    amount); the message says what to change."""

    code = "usage"


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON for scripts instead of text"
    )


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def dumps(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """One result: `data` as JSON with --json, else `text`."""
    print(dumps(data) if wants_json(args) else text, flush=True)


def emit_rows(args: argparse.Namespace, rows: Iterable[dict[str, Any]], line: Any) -> int:
    """A listing: one JSON object per line with --json, else line(row) per row.
    Returns how many rows were printed."""
    count = 0
    as_json = wants_json(args)
    for row in rows:
        print(dumps(row) if as_json else line(row))
        count += 1
    sys.stdout.flush()
    return count


def print_error(args: argparse.Namespace, code: str, message: str) -> None:
    if wants_json(args):
        print(dumps({"error": code, "message": message}), flush=True)
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)


def describe_failure(exc: BaseException) -> tuple[str, int, str]:
    """(error code, exit code, message) of anything a command raised."""
    if isinstance(exc, UsageError):
        return exc.code, EXIT_USAGE, str(exc)
    if isinstance(exc, DatabaseNotMigrated):  # an Unavailable an operator must fix
        return exc.code, EXIT_USAGE, str(exc)
    if isinstance(exc, Unavailable):
        return exc.code, EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, InvalidRequest):
        return exc.code, EXIT_REFUSED, f"{exc.field}: {exc}"
    if isinstance(exc, MeteringError):
        return exc.code, EXIT_REFUSED, str(exc)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "unavailable", EXIT_UNAVAILABLE, f"Redis did not answer: {exc}"
    # Postgres down (asyncpg and socket errors): imported here to keep this module's
    # import light for the commands that never reach Postgres.
    from metering.ledger.database import DATABASE_DOWN

    if isinstance(exc, DATABASE_DOWN):
        return "unavailable", EXIT_UNAVAILABLE, f"Postgres did not answer: {exc!r}"
    return (
        "internal",
        EXIT_INTERNAL,
        f"unexpected {type(exc).__name__}: {exc} (a bug; run with --log-level debug "
        "for the traceback)",
    )


def read_input(raw: str, what: str) -> str:
    """`raw` itself, or the content of the file named after '@' ('@-': stdin)."""
    if not raw.startswith("@"):
        return raw
    return read_file(raw[1:], what)


def read_file(name: str, what: str) -> str:
    if name == "-":
        return sys.stdin.read(INPUT_FILE_BYTES_MAX)
    path = pathlib.Path(name)
    try:
        if path.stat().st_size > INPUT_FILE_BYTES_MAX:
            raise UsageError(f"{what} file {name} is larger than {INPUT_FILE_BYTES_MAX} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {name} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} file {name} is a directory") from None
    except PermissionError:
        raise UsageError(f"{what} file {name} cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} file {name} is not UTF-8 text") from None


def add_amount_options(parser: argparse.ArgumentParser, signed: bool) -> None:
    """--amount-micros N or --amount-usd D, exactly one (money is never a float)."""
    group = parser.add_mutually_exclusive_group(required=True)
    sign = "signed: negative takes money" if signed else "positive"
    group.add_argument(
        "--amount-micros",
        metavar="N",
        help=f"the amount in micro-units, 1 USD = 1000000 ({sign})",
    )
    group.add_argument(
        "--amount-usd",
        metavar="D",
        help=f"the amount in dollars, at most 6 decimals, e.g. 12.50 ({sign})",
    )


def amount_micros(args: argparse.Namespace, signed: bool) -> int:
    """The amount of --amount-micros / --amount-usd, exact."""
    if args.amount_micros is not None:
        text, scale, option = args.amount_micros, 1, "--amount-micros"
    else:
        text, scale, option = args.amount_usd, MICROS_PER_USD, "--amount-usd"
    try:
        value = decimal.Decimal(text.strip()) * scale
    except decimal.InvalidOperation:
        raise UsageError(f"{option} {text!r} is not a number") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise UsageError(
            f"{option} {text!r} is not a whole number of micros"
            + (" (at most 6 decimals)" if scale != 1 else "")
        )
    micros = int(value)
    if micros == 0 or (micros < 0 and not signed):
        raise UsageError(f"{option} must be {'non-zero' if signed else 'positive'}, not {text}")
    if abs(micros) > CREDIT_MICROS_MAX:
        raise UsageError(f"{option} {text} is above the limit of {CREDIT_MICROS_MAX} micros")
    return micros
