"""`python -m metering accounts`: list accounts, or create one (written through to
Postgres first, like the API), from the command line."""

from __future__ import annotations

import argparse
import json
import pathlib

import orjson

from metering import accounts
from metering.errors import MeteringError
from metering.ledger import registry
from metering.ledger.database import create_pool
from metering.money import format_usd
from metering.rate_card import RateCard
from metering.settings import Settings
from metering.store import open_store

LIST_MAX = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="every account with its live balance")
    listing.add_argument(
        "--limit", type=int, default=1_000, help=f"at most this many (up to {LIST_MAX})"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    create = sub.add_parser("create", help="create an account (idempotent)")
    create.add_argument("account_id")
    create.add_argument(
        "--rate-card", required=True, help="the rate card as JSON, or @path to a JSON file"
    )
    create.add_argument("--max-concurrent-calls", type=int, default=0)
    create.add_argument(
        "--token",
        metavar="LABEL",
        default=None,
        help="also issue a customer token with this label (printed once)",
    )


def _rate_card_text(raw: str) -> str:
    """The JSON itself, or the content of the file named after '@' (a small file)."""
    return pathlib.Path(raw[1:]).read_text() if raw.startswith("@") else raw


async def run(args: argparse.Namespace, settings: Settings) -> int:
    store = await open_store(settings)
    try:
        if args.action == "list":
            views = await accounts.list_accounts(store, min(args.limit, LIST_MAX))
            for v in views:
                if args.json:
                    print(orjson.dumps(v.as_dict()).decode())
                else:
                    print(
                        f"{v.account_id}\tbalance {format_usd(v.balance_micros)}\treserved "
                        f"{format_usd(v.reserved_micros)}\tseq {v.seq}"
                    )
            return 0
        text = _rate_card_text(args.rate_card)
        pool = await create_pool(settings)
        try:
            card = RateCard.parse(json.loads(text))
            view, created = await registry.create_account(
                store, pool, args.account_id, card, args.max_concurrent_calls
            )
            out = {"created": created, **view.as_dict()}
            if args.token:
                out["token"] = await registry.issue_customer_token(
                    store, pool, args.account_id, args.token
                )
        except (MeteringError, ValueError) as exc:
            print(f"error: {exc}")
            return 1
        finally:
            await pool.close()
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        await store.redis.aclose()
