"""The reservation sweeper: closes calls whose validity ran out without a
commit or release, with no request needing to arrive. Every gateway process
runs one; the script is atomic and checks each call's state and due time, so
several sweepers never expire a call twice."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from metering.burn import spend_key, spend_ttl_s
from metering.keys import AccountKeys, all_shards, split_expiry_member
from metering.metrics import METRICS
from metering.outages import REDIS_DOWN, Outage, pause
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
                        spend_key(s, keys.shard),
                    ],
                    [
                        account_id,
                        call_id,
                        s.idempotency_window_s,
                        s.live_channel,
                        spend_ttl_s(s),
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
