"""How far the durable ledger is behind Redis: entries not yet in Postgres and
the age of the oldest one, per shard and in all (one script call per shard,
pipelined)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from metering.keys import all_shards
from metering.scripts import LuaScript
from metering.store import Store

# Concurrent script calls on a cluster, whose pipelines refuse EVALSHA.
CLUSTER_CONCURRENCY = 16


@dataclasses.dataclass(frozen=True, slots=True)
class ShardLag:
    shard: int
    entries_behind: int
    oldest_age_ms: int  # -1: nothing behind


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerLag:
    entries_behind: int
    oldest_age_ms: int  # -1: nothing behind
    shards: list[ShardLag]

    def as_dict(self) -> dict[str, Any]:
        """The ops view: totals and the shards that are behind."""
        return {
            "entries_behind": self.entries_behind,
            "oldest_age_ms": self.oldest_age_ms if self.oldest_age_ms >= 0 else None,
            "shards_behind": [dataclasses.asdict(s) for s in self.shards if s.entries_behind],
        }


async def each_stream(
    store: Store, script: LuaScript, streams: list[str], args: list[Any]
) -> list[Any]:
    """Run a one-key script on each stream: one pipelined round trip on a single
    server, bounded concurrent calls on a cluster."""
    if store.settings.redis_cluster:
        limit = asyncio.Semaphore(CLUSTER_CONCURRENCY)

        async def one(stream: str) -> Any:
            async with limit:
                return await script(store.redis, [stream], args)

        return list(await asyncio.gather(*(one(s) for s in streams)))
    async with store.redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.evalsha(script.sha, 1, stream, *args)
        answers = await pipe.execute(raise_on_error=False)
    out = []
    for stream, answer in zip(streams, answers, strict=True):
        if isinstance(answer, Exception):  # NOSCRIPT after a Redis restart
            answer = await script(store.redis, [stream], args)
        out.append(answer)
    return out


async def ledger_lag(store: Store) -> LedgerLag:
    """Entries the writers have not committed yet (delivered and unacknowledged,
    or never delivered), and the age of the oldest of them by Redis's clock."""
    shards = all_shards(store.settings.shard_count)
    answers = await each_stream(
        store,
        store.scripts["ledger_lag"],
        [s.ledger for s in shards],
        [store.settings.ledger_consumer_group],
    )
    lags = [
        ShardLag(shard.shard, int(a[0]), int(a[1]))
        for shard, a in zip(shards, answers, strict=True)
    ]
    ages = [s.oldest_age_ms for s in lags if s.oldest_age_ms >= 0]
    return LedgerLag(sum(s.entries_behind for s in lags), max(ages) if ages else -1, lags)
