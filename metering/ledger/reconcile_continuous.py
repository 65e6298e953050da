"""`python -m metering reconcile --continuous`: reconcile all the time, in small
batches, so a drift between Redis and the ledger is seen within minutes.

A pass walks the shards in order. A batch is as many consecutive shards as hold
about `reconcile_batch_accounts_max` accounts (at least one shard), checked by
the same rules as `reconcile` (metering/ledger/reconcile.py) but reading only
those accounts: their Redis hashes, their shards' streams, and their Postgres
rows by primary key. Between batches it pauses `reconcile_batch_interval_s`, so
it never holds Redis or Postgres for long. Each difference is logged (one line,
the same words as `reconcile`) and counted; at the end of a pass the total is
the gauge `metering_reconcile_differences` and a summary is kept in Redis for
`GET /v1/ops/status`. Redis or Postgres going away is waited out.

A pass over N accounts takes about N / reconcile_batch_accounts_max batches,
times the pause: 100,000 accounts at the defaults (200 a batch, 1 s) is about
9 minutes; the alert rules allow two passes before calling a drift missed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from typing import Any

import orjson

from metering.heartbeats import now_us
from metering.keys import ShardKeys, reconcile_summary_key, shard_of
from metering.ledger.database import DATABASE_DOWN, connect
from metering.ledger.reconcile import Difference, Scope, reconcile
from metering.metrics import METRICS
from metering.outages import REDIS_DOWN, Outage, pause
from metering.settings import Settings
from metering.store import Store

log = logging.getLogger(__name__)
# Differences kept in the summary for the status endpoint (all are counted and logged).
SUMMARY_DIFFERENCES_MAX = 50
DURABLE_IDS_SQL = "SELECT id FROM accounts"


@dataclasses.dataclass(slots=True)
class Pass:
    started: float = dataclasses.field(default_factory=time.monotonic)
    accounts_checked: int = 0
    differences: list[Difference] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        kinds = collections.Counter(d.kind for d in self.differences)
        return {
            "finished_at_us": now_us(),
            "seconds": round(time.monotonic() - self.started, 3),
            "accounts_checked": self.accounts_checked,
            "differences": len(self.differences),
            "by_kind": dict(kinds),
            "first": [d.line() for d in self.differences[:SUMMARY_DIFFERENCES_MAX]],
        }


class ContinuousReconcile:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.settings: Settings = store.settings
        self.conn: Any = None
        self.outage = Outage(
            "continuous reconcile", log, self.settings.outage_backoff_max_s, store.redis
        )

    async def _connection(self) -> Any:
        if self.conn is None or self.conn.is_closed():
            self.conn = await connect(self.settings)
        return self.conn

    async def durable_ids_by_shard(self) -> dict[int, set[str]]:
        """Postgres's accounts by shard (one read per pass: ids only)."""
        out: dict[int, set[str]] = collections.defaultdict(set)
        conn = await self._connection()
        async with conn.transaction(readonly=True):
            async for row in conn.cursor(DURABLE_IDS_SQL, prefetch=10_000):
                out[shard_of(row["id"], self.settings.shard_count)].add(row["id"])
        return out

    async def batches(self, durable: dict[int, set[str]]) -> list[Scope]:
        """Consecutive shards holding about reconcile_batch_accounts_max accounts each."""
        shard_count = self.settings.shard_count
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for shard in range(shard_count):
                pipe.scard(ShardKeys(shard).accounts)
            sizes = await pipe.execute()
        out, shards, ids, size = [], [], set[str](), 0
        for shard in range(shard_count):
            shards.append(shard)
            ids |= durable.get(shard, set())
            size += max(int(sizes[shard]), len(durable.get(shard, ())))
            if size >= self.settings.reconcile_batch_accounts_max or shard == shard_count - 1:
                out.append(Scope(shards, frozenset(ids)))
                shards, ids, size = [], set(), 0
        return out

    async def one_pass(self, stop: asyncio.Event) -> Pass | None:
        """Every account once; None when stopped half-way."""
        done = Pass()
        durable = await self.durable_ids_by_shard()
        for scope in await self.batches(durable):
            if stop.is_set():
                return None
            report = await reconcile(self.store, await self._connection(), scope)
            done.accounts_checked += report.accounts_checked
            METRICS.reconcile_accounts.inc((), report.accounts_checked)
            for d in report.differences:
                METRICS.reconcile_differences.inc((d.kind,))
                log.warning("%s", d.line())
            done.differences += report.differences
            await pause(stop, self.settings.reconcile_batch_interval_s)
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until stop is set; a server that goes away is waited out."""
        try:
            while not stop.is_set():
                try:
                    done = await self.one_pass(stop)
                except (*REDIS_DOWN, *DATABASE_DOWN) as exc:
                    if self.conn is not None:
                        self.conn.terminate()
                        self.conn = None
                    await self.outage.wait(exc, stop)
                    continue
                self.outage.ended()
                if done is None:
                    return
                await self.finish(done)
        finally:
            if self.conn is not None:
                self.conn.terminate()

    async def finish(self, done: Pass) -> None:
        summary = done.summary()
        METRICS.reconcile_open.set((), len(done.differences))
        METRICS.reconcile_pass_seconds.set((), summary["seconds"])
        METRICS.reconcile_passes.inc()
        await self.store.redis.set(reconcile_summary_key(), orjson.dumps(summary))
        log.info(
            "continuous reconcile: pass of %d accounts in %.1f s, %d differences",
            done.accounts_checked,
            summary["seconds"],
            len(done.differences),
        )
