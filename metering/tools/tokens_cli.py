"""`python -m metering tokens`: an account's customer tokens from the command
line: list them, issue one, revoke one (by its token id) or all of them."""

from __future__ import annotations

import argparse
import datetime as dt

from metering.accounts import token_digest
from metering.errors import MeteringError
from metering.ledger import customer_tokens, registry
from metering.ledger.database import create_pool
from metering.settings import Settings
from metering.store import open_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="the account's tokens: id, label, issued, revoked")
    listing.add_argument("account_id")
    issue = sub.add_parser("issue", help="issue a token (printed once)")
    issue.add_argument("account_id")
    issue.add_argument("--label", required=True, help="what the token is for")
    revoke = sub.add_parser(
        "revoke", help="revoke a token (it stops working at once, its live sockets close)"
    )
    revoke.add_argument("account_id")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("token_id", nargs="?", help="the token id `tokens list` shows")
    which.add_argument("--all", action="store_true", help="every token of the account")


def _when(at_us: int | None) -> str:
    if at_us is None:
        return "-"
    return dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    store = await open_store(settings)
    pool = await create_pool(settings)
    try:
        if args.action == "list":
            tokens = await customer_tokens.list_tokens(
                pool, settings.database_timeout_s, args.account_id
            )
            print("token_id\tissued\trevoked\tlabel")
            for t in tokens:
                print(
                    f"{t.token_id}\t{_when(t.created_at_us)}\t{_when(t.revoked_at_us)}\t{t.label}"
                )
        elif args.action == "issue":
            token = await registry.issue_customer_token(store, pool, args.account_id, args.label)
            token_id = customer_tokens.token_id_of(token_digest(token))
            print(f"token_id {token_id}\ntoken {token}")
        else:
            revoked = await customer_tokens.revoke(
                store, pool, args.account_id, None if args.all else args.token_id
            )
            print(
                f"revoked {len(revoked)} token{'' if len(revoked) == 1 else 's'}: "
                + (", ".join(f"{t.token_id} ({t.label})" for t in revoked) or "none left")
            )
    except MeteringError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        await pool.close()
        await store.redis.aclose()
    return 0
