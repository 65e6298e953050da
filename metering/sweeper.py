"""The reservation sweeper: closes calls whose validity ran out without a
commit or release, with no request needing to arrive. Every gateway process
runs one; the script is atomic and checks each call's state, so several
sweepers never expire a call twice."""

from __future__ import annotations

import asyncio
import logging

from metering.keys import PREFIX, ShardKeys, all_shards
from metering.store import Store

log = logging.getLogger(__name__)


# Concurrent per-shard sweeps on a cluster (its pipelines refuse EVALSHA).
CLUSTER_SWEEP_CONCURRENCY = 16


async def expire_due_reservations(store: Store) -> int:
    """One pass over every shard; returns how many calls it expired."""
    s = store.settings
    shards = all_shards(s.shard_count)
    args = [
        s.reservation_sweep_batch_max,
        s.idempotency_window_s,
        s.ledger_backlog_max,
        s.live_channel,
    ]
    script = store.scripts.expire_reservations

    async def sweep(shard: ShardKeys) -> int:
        keys = [shard.expiry, shard.ledger, shard.recharge]
        return int((await script(store.redis, keys, [PREFIX + shard.tag, *args]))[0])

    if s.redis_cluster:
        limit = asyncio.Semaphore(CLUSTER_SWEEP_CONCURRENCY)

        async def bounded(shard: ShardKeys) -> int:
            async with limit:
                return await sweep(shard)

        return sum(await asyncio.gather(*(bounded(shard) for shard in shards)))

    # One pipelined round trip for all shards on a single server.
    async with store.redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.evalsha(
                script.sha, 3, shard.expiry, shard.ledger, shard.recharge, PREFIX + shard.tag, *args
            )
        answers = await pipe.execute(raise_on_error=False)
    expired = 0
    for shard, answer in zip(shards, answers, strict=True):
        if isinstance(answer, Exception):
            # NOSCRIPT after a Redis restart: this shard goes through the reloading path.
            expired += await sweep(shard)
        else:
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
