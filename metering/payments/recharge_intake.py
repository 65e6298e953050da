"""Recharge intake: requests from the shard streams become recharge episodes.

The scripts mark an account's recharge pending once and XADD one request to its
shard's stream `m:{sNNN}:recharge`. The worker reads the streams through a
consumer group, crash-safe like the ledger writer (metering/stream_groups.py):

- its consumer name is stable (`recharge-<host>` unless given), so a restarted
  worker re-reads the requests it took but never acknowledged;
- after any failed pass (Postgres down, say) it re-reads its own pending
  requests before new ones, for as long as any are left;
- every `recharge_claim_interval_ms` it takes over requests another consumer
  left pending for `recharge_claim_idle_ms`;
- a request is acknowledged (and deleted) only once its episode row is
  committed, and opening an episode twice is harmless (ON CONFLICT DO NOTHING;
  at most one open episode per account, by a unique index).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from metering import crash_points
from metering.keys import all_shards
from metering.store import Store
from metering.stream_groups import claim_idle, ensure_groups

log = logging.getLogger(__name__)

SQL_OPEN_EPISODE = """
    INSERT INTO recharge_episodes (account_id, episode_us, amount_micros, status,
        next_attempt_at_us)
    VALUES ($1, $2, $3, 'open', 0) ON CONFLICT DO NOTHING"""
# Read own pending requests from the start of the list.
OWN_PENDING = "0"
NEW = ">"


@dataclasses.dataclass(frozen=True, slots=True)
class RechargeRequest:
    """One request of a shard's recharge stream: one XADD (lua/_lib.lua) when a
    change takes the available balance below the threshold while no recharge is
    pending. at_us is the pending mark it set: the episode's id."""

    account_id: str
    amount_micros: int
    available_micros: int
    threshold_micros: int
    at_us: int

    @classmethod
    def from_stream(cls, fields: Mapping[str, str]) -> RechargeRequest:
        return cls(
            account_id=fields["account_id"],
            amount_micros=int(fields["amount_micros"]),
            available_micros=int(fields["available_micros"]),
            threshold_micros=int(fields["threshold_micros"]),
            at_us=int(fields["at_us"]),
        )


async def open_episode(db: Any, account_id: str, episode_us: int, amount_micros: int) -> None:
    """Open the episode of a pending mark (idempotent; a no-op while the account
    has another open episode)."""
    await db.execute(SQL_OPEN_EPISODE, account_id, episode_us, amount_micros)


class RechargeIntake:
    """Moves recharge requests into episodes; `step` once per worker round."""

    def __init__(self, store: Store, db: Any, consumer: str) -> None:
        self.store = store
        self.db = db
        self.settings = store.settings
        self.consumer = consumer
        self.group = self.settings.recharge_consumer_group
        self.streams = [shard.recharge for shard in all_shards(self.settings.shard_count)]
        # A fresh process may hold requests from its previous life.
        self._own_pending = True
        self._last_claim = 0.0

    async def ensure_groups(self) -> None:
        await ensure_groups(self.store.redis, self.streams, self.group)

    async def step(self) -> int:
        """Own pending requests (while any are left), abandoned ones (now and then),
        then new ones; returns how many requests became episodes."""
        moved = 0
        try:
            if self._own_pending:
                got = await self._read(OWN_PENDING)
                self._own_pending = got > 0
                moved += got
            interval_s = self.settings.recharge_claim_interval_ms / 1000
            if time.monotonic() - self._last_claim >= interval_s:
                self._last_claim = time.monotonic()
                moved += await self._claim()
            moved += await self._read(NEW)
        except BaseException:
            # Whatever was read and not acknowledged is ours to read again first.
            self._own_pending = True
            raise
        return moved

    async def _read(self, start: str) -> int:
        batch_max = self.settings.recharge_batch_max
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xreadgroup(self.group, self.consumer, {stream: start}, count=batch_max)
            answers = await pipe.execute()
        got = 0
        for answer in answers:
            for stream, entries in answer or []:
                for entry_id, fields in entries:
                    got += await self._take(stream, entry_id, fields)
        return got

    async def _claim(self) -> int:
        got = 0
        for stream in self.streams:
            entries = await claim_idle(
                self.store.redis,
                stream,
                self.group,
                self.consumer,
                self.settings.recharge_claim_idle_ms,
                self.settings.recharge_batch_max,
            )
            for entry_id, fields in entries:
                got += await self._take(stream, entry_id, fields)
        if got:
            log.info("took over %d recharge requests another worker left pending", got)
        return got

    async def _take(self, stream: str, entry_id: str, fields: Mapping[str, str] | None) -> int:
        """Open the request's episode, then acknowledge it; a request trimmed while
        pending (no fields) is only acknowledged."""
        opened = 0
        if fields:
            req = RechargeRequest.from_stream(fields)
            crash_points.reached(self.settings, crash_points.REQUEST_READ)
            await open_episode(self.db, req.account_id, req.at_us, req.amount_micros)
            opened = 1
        await self.store.redis.xack(stream, self.group, entry_id)
        await self.store.redis.xdel(stream, entry_id)
        return opened
