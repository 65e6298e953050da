"""`python -m metering tokens`: an account's customer tokens from the command
line: list them, issue one (printed once; only its SHA-256 is kept), revoke one
(by the token id `tokens list` shows) or all of them. A revoked token stops
working at once and its live sockets close."""

from __future__ import annotations

import argparse
import datetime as dt

from metering.accounts import token_digest
from metering.ledger import customer_tokens, registry
from metering.settings import Settings
from metering.tools.connections import store_and_pool
from metering.tools.output import EXIT_OK, add_json_option, emit, emit_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = sub.add_parser(
        "list",
        help="the account's tokens: id, label, issued, revoked",
        description="The account's tokens, oldest first, revoked ones included.",
    )
    listing.add_argument("account_id")
    add_json_option(listing)
    issue = sub.add_parser(
        "issue",
        help="issue a token (printed once)",
        description="Issue a customer token for the account's dashboard; it is printed "
        "once and only its SHA-256 is kept (Postgres first, then Redis).",
    )
    issue.add_argument("account_id")
    issue.add_argument("--label", required=True, help="what the token is for")
    add_json_option(issue)
    revoke = sub.add_parser(
        "revoke",
        help="revoke a token (it stops working at once, its live sockets close)",
        description="Revoke one token by its id, or --all of the account's tokens.",
    )
    revoke.add_argument("account_id")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("token_id", nargs="?", help="the token id `tokens list` shows")
    which.add_argument("--all", action="store_true", help="every token of the account")
    add_json_option(revoke)


def _when(at_us: int | None) -> str:
    if at_us is None:
        return "-"
    return dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with store_and_pool(settings) as (store, pool):
        if args.action == "list":
            tokens = await customer_tokens.list_tokens(
                pool, settings.database_timeout_s, args.account_id
            )
            emit_rows(
                args,
                (t.as_dict() for t in tokens),
                lambda t: (
                    f"{t['token_id']}\t{_when(t['created_at_us'])}\t"
                    f"{_when(t['revoked_at_us'])}\t{t['label']}"
                ),
            )
        elif args.action == "issue":
            token = await registry.issue_customer_token(store, pool, args.account_id, args.label)
            token_id = customer_tokens.token_id_of(token_digest(token))
            out = {
                "account_id": args.account_id,
                "label": args.label,
                "token": token,
                "token_id": token_id,
            }
            emit(
                args,
                out,
                f"token_id {token_id}\ntoken {token}\ndashboard: {settings.public_url}"
                f"/dashboard?account={args.account_id}&token={token}",
            )
        else:
            revoked = await customer_tokens.revoke(
                store, pool, args.account_id, None if args.all else args.token_id
            )
            emit(
                args,
                {"account_id": args.account_id, "revoked": [t.as_dict() for t in revoked]},
                f"revoked {len(revoked)} token{'' if len(revoked) == 1 else 's'}: "
                + (", ".join(f"{t.token_id} ({t.label})" for t in revoked) or "none left"),
            )
    return EXIT_OK
