"""The reservation sweeper: closes calls whose validity ran out without a
commit or release, with no request needing to arrive. Every gateway process
runs one; the script is atomic and checks each call's state, so several
sweepers never expire a call twice."""

from __future__ import annotations

import asyncio
import logging

from metering.keys import PREFIX, all_shards
from metering.store import Store

log = logging.getLogger(__name__)


async def expire_due_reservations(store: Store) -> int:
    """One pass over every shard; returns how many calls it expired."""
    s = store.settings
    expired = 0
    shards = all_shards(s.shard_count)
    # One pipelined round trip for all shards (a cluster client splits it per node).
    async with store.redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.evalsha(
                store.scripts.expire_reservations.sha, 3,
                shard.expiry, shard.ledger, shard.recharge,
                PREFIX + shard.tag, s.reservation_sweep_batch_max, s.idempotency_window_s,
                s.ledger_backlog_max, s.live_channel,
            )
        answers = await pipe.execute(raise_on_error=False)
    for shard, answer in zip(shards, answers, strict=True):
        if isinstance(answer, Exception):
            # NOSCRIPT after a Redis restart: run this shard through the reloading path.
            answer = await store.scripts.expire_reservations(
                store.redis, [shard.expiry, shard.ledger, shard.recharge],
                [PREFIX + shard.tag, s.reservation_sweep_batch_max, s.idempotency_window_s,
                 s.ledger_backlog_max, s.live_channel],
            )
        expired += int(answer[0])
    return expired


async def run_sweeper(store: Store, stop: asyncio.Event) -> None:
    """Sweep every `reservation_sweep_interval_s` until stop is set; errors are
    logged and retried on the next tick so a Redis blip does not end expiry."""
    interval_s = store.settings.reservation_sweep_interval_s
    while not stop.is_set():
        try:
            expired = await expire_due_reservations(store)
            if expired:
                log.info("expired %d forgotten call reservations", expired)
        except Exception:
            log.exception("reservation sweep failed; retrying next tick")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass


def add_arguments(parser: object) -> None:
    """`python -m metering sweep` takes no options; intervals come from settings."""


async def run(args: object, settings: object) -> int:
    from metering.settings import Settings
    from metering.store import open_store

    assert isinstance(settings, Settings)
    store = await open_store(settings)
    try:
        await run_sweeper(store, asyncio.Event())
    finally:
        await store.redis.aclose()
    return 0
