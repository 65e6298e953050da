"""`python -m metering tokens`: issue a customer token for an account's dashboard
(printed once; only its SHA-256 is kept), or list the tokens an account has
(label, when issued, and a token id: the start of the SHA-256)."""

from __future__ import annotations

import argparse

from metering.accounts import token_digest
from metering.ledger import registry
from metering.settings import Settings
from metering.tools.connections import store_and_pool
from metering.tools.output import EXIT_OK, add_json_option, emit, emit_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = sub.add_parser(
        "issue",
        help="issue a customer token (printed once)",
        description="Issue a customer token for the account's dashboard; it is printed "
        "once and only its SHA-256 is kept (Postgres first, then Redis).",
    )
    issue.add_argument("account_id")
    issue.add_argument("--label", required=True, help="who or what the token is for")
    add_json_option(issue)
    listing = sub.add_parser(
        "list",
        help="the account's tokens",
        description="The account's customer tokens: "
        "token id (start of the SHA-256), label, when issued.",
    )
    listing.add_argument("account_id")
    add_json_option(listing)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with store_and_pool(settings) as (store, pool):
        if args.action == "issue":
            token = await registry.issue_customer_token(store, pool, args.account_id, args.label)
            out = {
                "account_id": args.account_id,
                "label": args.label,
                "token": token,
                "token_id": token_digest(token)[: registry.TOKEN_ID_LENGTH],
            }
            emit(
                args,
                out,
                f"customer token for {args.account_id} ({args.label}), shown once:\n{token}\n"
                f"dashboard: {settings.public_url}/dashboard?account={args.account_id}"
                f"&token={token}",
            )
            return EXIT_OK
        rows = await registry.list_customer_tokens(
            pool, args.account_id, settings.database_timeout_s
        )
    emit_rows(args, rows, lambda r: f"{r['token_id']}\t{r['created_at']}\t{r['label']}")
    return EXIT_OK
