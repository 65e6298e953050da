"""`python -m metering credit ACCOUNT --amount-usd 25 --reason "..."`: an ops
credit, as `POST /v1/accounts/{id}/credits` makes it (ledger item "adding funds",
source ops_credit, the reason in the entry's detail).

A credit is idempotent by its id within the idempotency window: give
`--credit-id` to make a retry safe; without it a new id is made and printed.
"""

from __future__ import annotations

import argparse
from typing import Any

from metering import credits
from metering.settings import Settings
from metering.store import Store
from metering.tools.money_cli import add_money_arguments, run_money


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_money_arguments(parser, __doc__, "--credit-id", signed=False)


async def _credit(store: Store, account_id: str, credit_id: str, amount: int, reason: str) -> Any:
    return await credits.add_funds(store, account_id, credit_id, amount, "ops_credit", reason)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    return await run_money(args, settings, "credit", False, _credit)
