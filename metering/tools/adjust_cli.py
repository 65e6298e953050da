"""`python -m metering adjust ACCOUNT --amount-usd -4.20 --reason "..."`: correct a
balance that is wrong, up or down, with a reason (ledger items "balance
adjustment (added)" / "(taken)", the reason in the entry's detail).

A negative adjustment never takes money reserved for open calls and is refused
(exit 4) beyond the available balance; no adjustment asks for an automatic
recharge. Idempotent by `--adjustment-id` within the idempotency window;
without it a new id is made and printed.
"""

from __future__ import annotations

import argparse

from metering import adjustments
from metering.settings import Settings
from metering.tools.money_cli import add_money_arguments, run_money


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_money_arguments(parser, __doc__, "--adjustment-id", signed=True)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    return await run_money(args, settings, "adjustment", True, adjustments.adjust_balance)
