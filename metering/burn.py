"""Burn rate: what each account spends per minute, over a real window, counted
by the server (not by whichever page happens to be open).

Every script that charges (debit, commit, expire_call) adds the charge to its
shard's counter hash of the current time bucket, `m:{sNNN}:spend:<bucket>`
(account id -> micros), which expires after the window plus two buckets. A
bucket is `burn_bucket_s` long and numbered from the epoch on the caller's
clock. The rate over `burn_window_s` sums the buckets the window covers, the
oldest weighted by the part of it inside the window (the usual sliding-window
counter), in integer micros:

    rate = spend in (now - window, now] * 60 / window   (micros per minute)

Reading costs one pipelined round trip: shards x (window / bucket + 1) HGETALLs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from metering.keys import ShardKeys, all_shards
from metering.settings import Settings
from metering.store import Store

US = 1_000_000


def spend_key(settings: Settings, shard: ShardKeys, now_us: int | None = None) -> str:
    """The counter hash a charge made now goes to."""
    at = time.time_ns() // 1_000 if now_us is None else now_us
    return shard.spend(at // (settings.burn_bucket_s * US))


def spend_ttl_s(settings: Settings) -> int:
    """How long a bucket is kept: the window and two buckets (one being filled, one
    partly inside the window)."""
    return settings.burn_window_s + 2 * settings.burn_bucket_s


@dataclasses.dataclass(frozen=True, slots=True)
class BurnRates:
    window_s: int
    at_us: int
    rates: dict[str, int]  # account id -> micros per minute (accounts that spent only)

    @property
    def total_micros_per_minute(self) -> int:
        return sum(self.rates.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "at_us": self.at_us,
            "total_micros_per_minute": self.total_micros_per_minute,
            "rates": self.rates,
        }


async def burn_rates(store: Store, now_us: int | None = None) -> BurnRates:
    """Every account's spend per minute over the last burn_window_s."""
    s = store.settings
    at = time.time_ns() // 1_000 if now_us is None else now_us
    bucket_us = s.burn_bucket_s * US
    start = at - s.burn_window_s * US
    oldest, newest = start // bucket_us, at // bucket_us
    # Micros of the oldest bucket that lie inside the window, over the bucket's length.
    inside_us = (oldest + 1) * bucket_us - start
    buckets = list(range(oldest, newest + 1))
    shards = all_shards(s.shard_count)
    async with store.redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            for bucket in buckets:
                pipe.hgetall(shard.spend(bucket))
        answers = await pipe.execute()
    spent: dict[str, int] = {}
    for i, counters in enumerate(answers):
        weighted = buckets[i % len(buckets)] == oldest
        for account_id, micros in counters.items():
            amount = int(micros)
            if weighted:
                amount = amount * inside_us // bucket_us
            spent[account_id] = spent.get(account_id, 0) + amount
    rates = {
        account_id: micros * 60 // s.burn_window_s for account_id, micros in spent.items() if micros
    }
    return BurnRates(s.burn_window_s, at, rates)
