"""`python -m metering sweep`: the reservation sweeper (metering/sweeper.py) on
its own, for deployments that run it apart from the gateways."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from metering.ledger.database import create_pool
from metering.ledger.recovery import check_redis
from metering.outages import Outage, until_it_answers
from metering.restart_fence import RestartFence
from metering.settings import Settings
from metering.store import open_store
from metering.sweeper import run_sweeper

log = logging.getLogger("metering.sweeper")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: intervals come from settings."""


async def run(args: argparse.Namespace, settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = await create_pool(settings)
    # Expiries move money: none in a restarted Redis before the ledger check.
    fence = RestartFence(lambda: check_redis(settings, db), settings.redis_timeout_s)
    # Started while Redis restarts: wait for it rather than exit.
    outage = Outage("sweeper", log, settings.outage_backoff_max_s)
    store = await until_it_answers(outage, stop, lambda: open_store(settings, fence))
    if store is None:
        await db.close()
        return 0
    log.info("sweeper started: every %.1f s", settings.reservation_sweep_interval_s)
    try:
        await run_sweeper(store, stop)
    finally:
        await store.aclose()
        await db.close()
    return 0
