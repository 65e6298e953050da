"""The recharge worker's repair pass: bounded, every `recharge_repair_interval_s`.

What a crash or an outage can leave half-done, put right once it is older than
`recharge_repair_grace_s` (younger, the normal path may still be finishing it):

- a charge that succeeded but was never credited (charges.credit_owed);
- card or recharge settings Postgres holds and Redis missed (settings_sync.repair),
  or whose copy a Redis that lost its last writes took back (the version in the
  account's hash older than Postgres's: settings_sync.repair_lost, in the pass
  over the accounts below);
- a pending recharge mark with no open episode behind it. The mark stops every
  later request for the account, so one left alone ends automatic recharge for
  good. Each pass reads the marks of `recharge_repair_accounts_max` accounts,
  shard after shard, continuing where the last pass stopped: a mark whose
  episode is missing gets its episode opened, a mark whose episode has ended is
  cleared (only if it is still that episode's). Every account is looked at within
  ceil(accounts / recharge_repair_accounts_max) passes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from metering.account_state import publish_account_state
from metering.keys import ShardKeys
from metering.payments import charges, settings_sync
from metering.payments.recharge_intake import open_episode
from metering.payments.recharge_marks import clear_pending_mark
from metering.store import Store

log = logging.getLogger(__name__)

# Shards whose account sets one pipelined round trip reads.
SHARDS_PER_ROUND_TRIP = 32

SQL_EPISODES_OF_MARKS = """
    SELECT m.account_id, m.episode_us, e.status
    FROM unnest($1::text[], $2::bigint[]) AS m(account_id, episode_us)
    LEFT JOIN recharge_episodes e USING (account_id, episode_us)"""


class RechargeRepair:
    def __init__(self, store: Store, db: Any) -> None:
        self.store = store
        self.db = db
        self.settings = store.settings
        self._next_shard = 0

    async def step(self) -> int:
        """One bounded pass; returns how many things it put right."""
        fixed = await charges.credit_owed(self.store, self.db)
        fixed += await settings_sync.repair(self.store, self.db)
        fixed += await self.stranded_marks()
        return fixed

    async def stranded_marks(self) -> int:
        """Read the marks of up to recharge_repair_accounts_max accounts and repair
        those older than the grace with no open episode."""
        shard_count = self.settings.shard_count
        grace_us = int(self.settings.recharge_repair_grace_s * 1_000_000)
        now_us = time.time_ns() // 1_000
        marks: list[tuple[str, int, str]] = []
        settings_held: dict[str, int] = {}
        looked = shards_read = 0
        while looked < self.settings.recharge_repair_accounts_max and shards_read < shard_count:
            # A few shards' members per round trip, then their marks in one more.
            chunk = [
                ShardKeys((self._next_shard + i) % shard_count)
                for i in range(min(SHARDS_PER_ROUND_TRIP, shard_count - shards_read))
            ]
            self._next_shard = (self._next_shard + len(chunk)) % shard_count
            shards_read += len(chunk)
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for shard in chunk:
                    pipe.smembers(shard.accounts)
                members = await pipe.execute()
            ids = sorted(account_id for found in members for account_id in found)
            if not ids:
                continue
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for account_id in ids:
                    pipe.hmget(
                        self.store.account_keys(account_id).account,
                        "recharge_pending_since_us",
                        "recharge_amount_micros",
                        "payment_settings_version",
                    )
                answers = await pipe.execute()
            for account_id, (since, amount, version) in zip(ids, answers, strict=True):
                if since and int(since) < now_us - grace_us:
                    marks.append((account_id, int(since), amount or ""))
                if version:
                    settings_held[account_id] = int(version)
            looked += len(ids)
        copied = await settings_sync.repair_lost(self.store, self.db, settings_held)
        return copied + await self._repair(marks)

    async def _repair(self, marks: list[tuple[str, int, str]]) -> int:
        if not marks:
            return 0
        rows = await self.db.fetch(
            SQL_EPISODES_OF_MARKS, [m[0] for m in marks], [m[1] for m in marks]
        )
        status = {(r["account_id"], r["episode_us"]): r["status"] for r in rows}
        fixed = 0
        for account_id, episode_us, amount in marks:
            state = status.get((account_id, episode_us))
            if state == "open":
                continue
            if state is None and amount.isdigit():
                # The request never became an episode: open it now.
                await open_episode(self.db, account_id, episode_us, int(amount))
                log.warning(
                    "repair: opened the lost recharge episode %d of %s", episode_us, account_id
                )
            else:
                # The episode ended (or the account has no amount to charge any more).
                await clear_pending_mark(self.store, account_id, episode_us)
                await publish_account_state(self.store, account_id)
                log.warning(
                    "repair: cleared the stale recharge mark %d of %s", episode_us, account_id
                )
            fixed += 1
        return fixed
