"""How far the durable ledger is behind Redis: entries not yet in Postgres and
the age of the oldest one, per shard and in all (one script call per shard,
pipelined)."""

from __future__ import annotations

import dataclasses
from typing import Any

from metering.keys import all_shards
from metering.store import Store


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


async def ledger_lag(store: Store) -> LedgerLag:
    """Entries the writers have not committed yet (delivered and unacknowledged,
    or never delivered), and the age of the oldest of them by Redis's clock."""
    script = store.scripts["ledger_lag"]
    group = store.settings.ledger_consumer_group
    shards = all_shards(store.settings.shard_count)
    async with store.redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.evalsha(script.sha, 1, shard.ledger, group)
        answers = await pipe.execute(raise_on_error=False)
    lags: list[ShardLag] = []
    for shard, answer in zip(shards, answers, strict=True):
        if isinstance(answer, Exception):  # NOSCRIPT after a Redis restart
            answer = await script(store.redis, [shard.ledger], [group])
        lags.append(ShardLag(shard.shard, int(answer[0]), int(answer[1])))
    ages = [s.oldest_age_ms for s in lags if s.oldest_age_ms >= 0]
    return LedgerLag(sum(s.entries_behind for s in lags), max(ages) if ages else -1, lags)
