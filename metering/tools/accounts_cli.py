"""`python -m metering accounts`: list, show, create or import accounts.

Creation is written through to Postgres first, like the API, and is idempotent:
the same account with the same rate card again is `created: false`.

`accounts import FILE.csv` reads a header row and one account per row:

    account_id[,<rate card field>...][,max_concurrent_calls][,credit_micros]

Price columns missing from the file come from `--rate-card` (every field must
come from one or the other). `credit_micros` adds an ops credit with the id
`import` (once per account within the idempotency window, so a repeated import
credits nothing more). Every row is checked before anything is written: one bad
row refuses the whole file, naming its line and field.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
from typing import Any

from metering import accounts, credits, fields
from metering.accounts import AccountView
from metering.errors import (
    AccountExists,
    InvalidRequest,
    MeteringError,
    Unavailable,
    UnknownAccount,
)
from metering.ledger import registry
from metering.money import CREDIT_MICROS_MAX, format_usd
from metering.rate_card import RateCard
from metering.settings import Settings
from metering.tools.connections import live_store, store_and_pool
from metering.tools.output import (
    EXIT_OK,
    EXIT_REFUSED,
    UsageError,
    add_json_option,
    emit,
    emit_rows,
    read_file,
    read_input,
    wants_json,
)

LIST_MAX = 100_000
IMPORT_ROWS_MAX = 100_000
IMPORT_CREDIT_ID = "import"
IMPORT_CREDIT_REASON = "opening balance (accounts import)"
RATE_CARD_FIELDS = RateCard.__struct_fields__
OPTIONAL_COLUMNS = ("max_concurrent_calls", "credit_micros")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser(
        "list",
        help="every account with its live balance",
        description="Every account with its live balance, shard by shard.",
    )
    listing.add_argument(
        "--limit", type=int, default=1_000, help=f"at most this many (up to {LIST_MAX})"
    )
    add_json_option(listing)
    show = sub.add_parser(
        "show",
        help="one account: balances, rate card, recharge, card, alerts",
        description="One account as the live store has it: balance, reserved and "
        "available, rate card, limits, automatic recharge, card on file, alerts.",
    )
    show.add_argument("account_id")
    add_json_option(show)
    create = sub.add_parser(
        "create",
        help="create an account (idempotent)",
        description="Create an account "
        "at zero balance (Postgres first, then Redis); the same creation again changes nothing.",
    )
    create.add_argument("account_id")
    create.add_argument(
        "--rate-card",
        required=True,
        help="the rate card as JSON, or @path of a JSON file (@- reads stdin)",
    )
    create.add_argument("--max-concurrent-calls", type=int, default=0, help="0 (default): no limit")
    create.add_argument(
        "--token",
        metavar="LABEL",
        default=None,
        help="also issue a customer token with this label (printed once)",
    )
    add_json_option(create)
    imports = sub.add_parser(
        "import",
        help="create accounts from a CSV file (all rows checked first)",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imports.add_argument("file", help="the CSV file (- reads stdin)")
    imports.add_argument(
        "--rate-card",
        default=None,
        help="prices for the columns the file lacks: JSON, or @path of a JSON file",
    )
    imports.add_argument("--dry-run", action="store_true", help="check every row, write nothing")
    add_json_option(imports)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        return await _list(args, settings)
    if args.action == "show":
        return await _show(args, settings)
    if args.action == "create":
        return await _create(args, settings)
    return await _import(args, settings)


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.limit <= LIST_MAX:
        raise UsageError(f"--limit must be between 1 and {LIST_MAX}")
    async with live_store(settings) as store:
        views = await accounts.list_accounts(store, args.limit)
    emit_rows(
        args,
        (v.as_dict() for v in views),
        lambda v: (
            f"{v['account_id']}\tbalance {format_usd(v['balance_micros'])}\treserved "
            f"{format_usd(v['reserved_micros'])}\tseq {v['seq']}"
        ),
    )
    return EXIT_OK


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    async with live_store(settings) as store:
        view = await accounts.get_account(store, args.account_id)
    emit(args, view.as_dict(), account_text(view))
    return EXIT_OK


def parse_rate_card(raw: str) -> RateCard:
    text = read_input(raw, "rate card")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"the rate card is not JSON: {exc}") from None
    return RateCard.parse(value)


async def _create(args: argparse.Namespace, settings: Settings) -> int:
    card = parse_rate_card(args.rate_card)
    async with store_and_pool(settings) as (store, pool):
        view, created = await registry.create_account(
            store, pool, args.account_id, card, args.max_concurrent_calls
        )
        out: dict[str, Any] = {"created": created, **view.as_dict()}
        if args.token:
            out["token"] = await registry.issue_customer_token(
                store, pool, args.account_id, args.token
            )
    if wants_json(args):
        emit(args, out, "")
        return EXIT_OK
    lines = [("created" if created else "already exists (unchanged)") + ":", account_text(view)]
    if args.token:
        lines.append(f"customer token (shown once): {out['token']}")
    print("\n".join(lines))
    return EXIT_OK


def fmt_time(at_us: int | None) -> str:
    if not at_us:
        return "-"
    moment = datetime.datetime.fromtimestamp(at_us / 1_000_000, datetime.UTC)
    return moment.isoformat(timespec="seconds")


def account_text(view: AccountView) -> str:
    """An account in a few lines for people."""
    r = view.recharge
    if r["amount_micros"] is None:
        recharge = "never set"
    else:
        recharge = (
            f"{'on' if r['enabled'] else 'off'}: {format_usd(r['amount_micros'])} when "
            f"available < {format_usd(r['threshold_micros'])}, failures to "
            f"{r['failure_email'] or '-'}"
        )
    if r["pending"]:
        recharge += f"; pending since {fmt_time(r['pending_since_us'])}"
    if r["last_failure"]:
        recharge += f"; last failure {fmt_time(r['last_failure_at_us'])}: {r['last_failure']}"
    card = view.card
    card_text = (
        f"{card['brand']} ending {card['last4']}, "
        f"expires {card['exp_month']:02d}/{card['exp_year']}"
        if card
        else "none"
    )
    alerts = view.alerts
    alert_text = (
        f"low balance below {format_usd(alerts['low_balance_threshold_micros'])} to "
        f"{alerts['email'] or '(the recharge failure email)'}"
        if alerts["low_balance_threshold_micros"]
        else "low balance alert off"
    )
    prices = ", ".join(f"{k}={v}" for k, v in view.rate_card.as_dict().items())
    limit = view.max_concurrent_calls or "no limit"
    return "\n".join(
        [
            f"account {view.account_id}",
            f"  balance     {format_usd(view.balance_micros)} ({view.balance_micros} micros)",
            f"  reserved    {format_usd(view.reserved_micros)}",
            f"  available   {format_usd(view.available_micros)}",
            f"  seq         {view.seq}",
            f"  open calls  {view.open_calls} (limit: {limit})",
            f"  rate card   {prices}",
            f"  recharge    {recharge}",
            f"  card        {card_text}",
            f"  alerts      {alert_text}",
            f"  created     {fmt_time(view.created_at_us)}",
        ]
    )


# ---------------------------------------------------------------- import


class ImportRow:
    __slots__ = ("line", "account_id", "card", "max_concurrent_calls", "credit_micros")

    def __init__(
        self, line: int, account_id: str, card: RateCard, max_calls: int, credit_micros: int
    ) -> None:
        self.line = line
        self.account_id = account_id
        self.card = card
        self.max_concurrent_calls = max_calls
        self.credit_micros = credit_micros


def _int_cell(row: dict[str, str], name: str, default: int | None) -> int:
    raw = (row.get(name) or "").strip()
    if not raw:
        if default is None:
            raise InvalidRequest(name, f"{name} is empty")
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(name, f"{name} must be a whole number, not {raw!r}") from None


def parse_import(text: str, default_card: RateCard | None) -> list[ImportRow]:
    """Every row checked; raises UsageError naming the first bad line and field."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if "account_id" not in header:
        raise UsageError("the CSV file needs a header row with an account_id column")
    known = {"account_id", *RATE_CARD_FIELDS, *OPTIONAL_COLUMNS}
    unknown = [h for h in header if h not in known]
    if unknown:
        raise UsageError(f"unknown CSV column {unknown[0]!r}; columns: {', '.join(sorted(known))}")
    lacking = [f for f in RATE_CARD_FIELDS if f not in header]
    if lacking and default_card is None:
        raise UsageError(
            f"the CSV file lacks the price column {lacking[0]!r}: add it, or give --rate-card"
        )
    defaults = default_card.as_dict() if default_card else {}
    out: list[ImportRow] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if len(out) >= IMPORT_ROWS_MAX:
            raise UsageError(f"more than {IMPORT_ROWS_MAX} rows; split the file")
        try:
            account_id = fields.account_id((row.get("account_id") or "").strip())
            if account_id in seen:
                raise InvalidRequest(
                    "account_id", f"account {account_id} is also on line {seen[account_id]}"
                )
            card = RateCard.parse({f: _int_cell(row, f, defaults.get(f)) for f in RATE_CARD_FIELDS})
            max_calls = fields.integer(
                _int_cell(row, "max_concurrent_calls", 0),
                "max_concurrent_calls",
                0,
                accounts.CONCURRENT_CALLS_MAX,
            )
            credit = fields.integer(
                _int_cell(row, "credit_micros", 0), "credit_micros", 0, CREDIT_MICROS_MAX
            )
        except InvalidRequest as exc:
            raise UsageError(f"line {line}: {exc.field}: {exc}") from None
        seen[account_id] = line
        out.append(ImportRow(line, account_id, card, max_calls, credit))
    return out


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    default_card = parse_rate_card(args.rate_card) if args.rate_card else None
    rows = parse_import(read_file(args.file, "CSV"), default_card)
    summary: dict[str, Any] = {"rows": len(rows), "created": 0, "existing": 0, "credited": 0}
    async with store_and_pool(settings) as (store, pool):
        # An account that exists with other prices refuses the file before any write.
        for row in rows:
            try:
                view = await accounts.get_account(store, row.account_id)
            except UnknownAccount:
                continue
            if view.rate_card != row.card or view.max_concurrent_calls != row.max_concurrent_calls:
                raise AccountExists(
                    f"line {row.line}: account {row.account_id} already exists with another "
                    "rate card or limit; nothing was imported"
                )
        if args.dry_run:
            summary["dry_run"] = True
            emit(args, summary, f"{len(rows)} rows checked; nothing written (--dry-run)")
            return EXIT_OK
        for row in rows:
            try:
                _, created = await registry.create_account(
                    store, pool, row.account_id, row.card, row.max_concurrent_calls
                )
                summary["created" if created else "existing"] += 1
                if row.credit_micros:
                    credit = await credits.add_funds(
                        store,
                        row.account_id,
                        IMPORT_CREDIT_ID,
                        row.credit_micros,
                        "ops_credit",
                        IMPORT_CREDIT_REASON,
                    )
                    summary["credited"] += 0 if credit.replayed else 1
            except MeteringError as exc:
                if isinstance(exc, Unavailable):
                    raise
                # Rows before this one are in (a rerun skips them); say where it stopped.
                summary["failed_line"] = row.line
                summary["error"] = f"{exc.code}: {exc}"
                emit(
                    args,
                    summary,
                    f"line {row.line} ({row.account_id}): {exc}; {summary['created']} created "
                    "before it (run the import again once fixed: it is idempotent)",
                )
                return EXIT_REFUSED
    emit(
        args,
        summary,
        f"{summary['rows']} rows: {summary['created']} accounts created, "
        f"{summary['existing']} already there, {summary['credited']} credited",
    )
    return EXIT_OK
