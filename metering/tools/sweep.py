"""`python -m metering sweep`: the reservation sweeper (metering/sweeper.py) on
its own, for deployments that run it apart from the gateways."""

from __future__ import annotations

import argparse
import logging

from metering.ledger.recovery import open_money_store
from metering.polling import stop_on_signals
from metering.settings import Settings
from metering.sweeper import run_sweeper

log = logging.getLogger("metering.sweeper")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: intervals come from settings."""


async def run(args: argparse.Namespace, settings: Settings) -> int:
    stop = stop_on_signals()
    # Expiries move money: none in a restarted Redis before the ledger check.
    opened = await open_money_store(settings, "sweeper", stop)
    if opened is None:
        return 0
    store, db = opened
    log.info("sweeper started: every %.1f s", settings.reservation_sweep_interval_s)
    try:
        await run_sweeper(store, stop)
    finally:
        await store.aclose()
        await db.close()
    return 0
