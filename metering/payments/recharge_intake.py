"""Recharge intake: requests from the shard streams become recharge episodes.

The scripts mark an account's recharge pending once and XADD one request to its
shard's stream `m:{sNNN}:recharge`. The worker reads the streams through a
consumer group, crash-safe (metering/shard_streams.py):

- its consumer name is stable (`recharge-<host>` unless given), so a restarted
  worker re-reads the requests it took but never acknowledged;
- after any failed pass (Postgres down, say) it re-reads its own pending
  requests before new ones, for as long as any are left;
- it takes over requests another consumer left pending for
  `stream_claim_idle_ms`;
- a request is acknowledged (and deleted) only once its episode row is
  committed, and opening an episode twice is harmless (ON CONFLICT DO NOTHING;
  at most one open episode per account, by a unique index).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from metering import crash_points
from metering.keys import ShardKeys
from metering.shard_streams import ShardStreamReader
from metering.store import Store

log = logging.getLogger(__name__)

SQL_OPEN_EPISODE = """
    INSERT INTO recharge_episodes (account_id, episode_us, amount_micros, status,
        next_attempt_at_us)
    VALUES ($1, $2, $3, 'open', 0) ON CONFLICT DO NOTHING"""


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
        self.reader = ShardStreamReader(
            store, recharge_stream, self.settings.recharge_consumer_group, consumer
        )
        # A fresh process may hold requests from its previous life.
        self._own_pending = True

    async def ensure_groups(self) -> None:
        await self.reader.ensure_groups()

    async def step(self) -> int:
        """Own pending requests (while any are left), then new ones and those another
        consumer abandoned; returns how many requests became episodes."""
        batch_max = self.settings.recharge_batch_max
        try:
            entries = []
            if self._own_pending:
                entries = await self.reader.read_own_pending(batch_max)
                self._own_pending = bool(entries)
            entries += await self.reader.read(batch_max)
            opened = 0
            for _stream, _entry_id, fields in entries:
                if fields:
                    req = RechargeRequest.from_stream(fields)
                    crash_points.reached(self.settings, crash_points.REQUEST_READ)
                    await open_episode(self.db, req.account_id, req.at_us, req.amount_micros)
                    opened += 1
            await self.reader.done(entries)
        except BaseException:
            # Whatever was read and not acknowledged is ours to read again first.
            self._own_pending = True
            raise
        return opened


def recharge_stream(shard: ShardKeys) -> str:
    return shard.recharge
