"""How far the durable ledger is behind Redis: entries not yet in Postgres and
the age of the oldest one, per shard and in all (one script call per shard,
pipelined)."""

from __future__ import annotations

import dataclasses
from typing import Any

from metering.keys import all_shards
from metering.store import Store, run_each


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
    shards = all_shards(store.settings.shard_count)
    group = store.settings.ledger_consumer_group
    answers = await run_each(
        store, store.scripts["ledger_lag"], [([s.ledger], [group]) for s in shards]
    )
    lags = [
        ShardLag(shard.shard, int(a[0]), int(a[1]))
        for shard, a in zip(shards, answers, strict=True)
    ]
    ages = [s.oldest_age_ms for s in lags if s.oldest_age_ms >= 0]
    return LedgerLag(sum(s.entries_behind for s in lags), max(ages) if ages else -1, lags)
