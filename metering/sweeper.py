"""The reservation sweeper: closes calls whose validity ran out without a
commit or release, with no request needing to arrive. Every gateway process
runs one; the script is atomic and checks each call's state and due time, so
several sweepers never expire a call twice."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from metering.keys import AccountKeys, all_shards, split_expiry_member
from metering.metrics import METRICS
from metering.outages import REDIS_DOWN, Outage, pause, until_it_answers
from metering.store import Store, run_each

EXPIRED = ("expired",)
log = logging.getLogger(__name__)


async def expire_due_reservations(store: Store) -> int:
    """One pass over every shard; returns how many calls it expired."""
    s = store.settings
    shards = all_shards(s.shard_count)
    now_ms = time.time_ns() // 1_000_000
    async with store.redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.zrangebyscore(shard.expiry, "-inf", now_ms, 0, s.reservation_sweep_batch_max)
        due_by_shard = await pipe.execute()
    calls: list[tuple[list[str], list[Any]]] = []
    for members in due_by_shard:
        for member in members:
            account_id, call_id = split_expiry_member(member)
            keys = AccountKeys(account_id, s.shard_count)
            calls.append(
                (
                    [
                        *keys.call_keys(call_id),
                        keys.shard.ledger,
                        keys.shard.recharge,
                        keys.shard.events,
                    ],
                    [
                        account_id,
                        call_id,
                        s.idempotency_window_s,
                        s.live_channel,
                    ],
                )
            )
    answers = await run_each(store, store.scripts.expire_call, calls)
    expired = sum(1 for answer in answers if answer[0] == "expired")
    if expired:
        METRICS.reservations.inc(EXPIRED, expired)
    return expired


async def run_sweeper(store: Store, stop: asyncio.Event) -> None:
    """Sweep every `reservation_sweep_interval_s` until stop is set. A Redis that
    stops answering is waited out with bounded backoff (metering/outages.py);
    any other error is logged and the next tick tries again."""
    interval_s = store.settings.reservation_sweep_interval_s
    outage = Outage("sweeper", log, store.settings.outage_backoff_max_s, store.redis)
    while not stop.is_set():
        try:
            expired = await expire_due_reservations(store)
        except REDIS_DOWN as exc:
            await outage.wait(exc, stop)
            continue
        except Exception:
            log.exception("reservation sweep failed; retrying next tick")
        else:
            outage.ended()
            if expired:
                log.info("expired %d forgotten call reservations", expired)
        await pause(stop, interval_s)


def add_arguments(parser: object) -> None:
    """`python -m metering sweep` takes no options; intervals come from settings."""


async def run(args: object, settings: object) -> int:
    from metering.settings import Settings
    from metering.store import open_store

    assert isinstance(settings, Settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Started while Redis restarts: wait for it rather than exit.
    outage = Outage("sweeper", log, settings.outage_backoff_max_s)
    store = await until_it_answers(outage, stop, lambda: open_store(settings))
    if store is None:
        return 0
    log.info("sweeper started: every %.1f s", settings.reservation_sweep_interval_s)
    try:
        await run_sweeper(store, stop)
    finally:
        await store.redis.aclose()
    return 0
