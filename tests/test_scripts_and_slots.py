"""Invariant 6: every script touches keys of one hash slot, checked on the keys
the code really passes; and scripts are called by SHA with reload on NOSCRIPT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.cluster import key_slot

from devkit.testing import RATE_CARD, RedisServer
from metering import accounts, adjustments, credits, debits, phone_numbers, reservations, sweeper
from metering.account_state import publish_account_state
from metering.keys import AccountKeys
from metering.payments import recharge_marks
from metering.rate_card import RateCard
from metering.scripts import Scripts
from metering.store import Store, open_store
from tests.conftest import new_account_id, test_settings


class RecordingRedis:
    """The real client, with every EVALSHA's keys written down."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls: list[tuple[str, list[str]]] = []

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.calls.append((sha, [str(k) for k in keys_and_args[:numkeys]]))
        return await self._real.evalsha(sha, numkeys, *keys_and_args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_every_script_call_uses_keys_of_one_slot(store: Store) -> None:
    recording = RecordingRedis(store.redis)
    s = Store(redis=recording, scripts=store.scripts, settings=store.settings)
    for _ in range(20):  # many accounts, so many shards and slots
        account = new_account_id()
        await accounts.create_account(s, account, RateCard.parse(RATE_CARD))
        await credits.add_funds(s, account, "c1", 5_000_000, "ops_credit", "test")
        await adjustments.adjust_balance(s, account, "a1", -1, "test")
        await debits.message(s, account, "m1", "outbound")
        await debits.ring_through_attempt(s, account, "t1")
        await debits.number_purchase(s, account, "p1", "+15550100")
        await debits.number_renewal(s, account, "r1", "+15550100")
        await reservations.reserve(s, account, "k1", "outbound")
        await reservations.extend(s, account, "k1", "x1")
        await reservations.commit(s, account, "k1", 42)
        await reservations.reserve(s, account, "k2", "inbound")
        await reservations.release(s, account, "k2")
        await reservations.reserve(s, account, "k3", "inbound")
        keys = AccountKeys(account, s.settings.shard_count)
        # The sweeper pipelines its calls; this one goes through the recording client.
        await s.scripts.expire_call(
            recording,
            [*keys.call_keys("k3"), keys.shard.ledger, keys.shard.recharge, keys.shard.events],
            [account, "k3", 60, s.settings.live_channel],
        )
        await recharge_marks.clear_pending_mark(s, account, 0)
        # The ledger check's script (here: nothing behind, it changes nothing).
        await s.scripts["fast_forward"](
            recording,
            [keys.account, keys.calls, keys.shard.expiry],
            [account, 0, 0, 60, s.settings.live_channel, 0],
        )
        await publish_account_state(s, account)
        await credits.add_charge_funds(s, account, "pi_slots", 1_000_000, "pay_now", "p")
        await s.scripts["sync_settings"](recording, [keys.account], [1, "recharge_enabled", "0"])
        await phone_numbers.change_status(s, account, "+15550100", "suspend")
        # The ledger writer's scripts take one shard stream each.
        group = s.settings.ledger_consumer_group
        await s.scripts["trim_ledger"](recording, [keys.shard.ledger], [group])
        await s.scripts["ledger_lag"](recording, [keys.shard.ledger], [group])
    by_sha = {script.sha: script.name for script in store.scripts.all()}
    used = {by_sha[sha] for sha, _ in recording.calls}
    assert used == set(by_sha.values())
    for sha, keys in recording.calls:
        assert len({key_slot(k.encode()) for k in keys}) == 1, (by_sha[sha], keys)


def test_account_and_shard_keys_share_the_shard_tag() -> None:
    for i in range(500):
        keys = AccountKeys(f"acct-{i}", 256)
        all_keys = [
            keys.account,
            keys.calls,
            keys.call("c@host"),
            keys.request("message", "m"),
            keys.charge_credit("pi_123"),
            keys.shard.ledger,
            keys.shard.recharge,
            keys.shard.expiry,
            keys.shard.accounts,
        ]
        assert len({key_slot(k.encode()) for k in all_keys}) == 1


async def test_sweeper_pass_touches_every_shard_once(store: Store) -> None:
    assert await sweeper.expire_due_reservations(store) >= 0


async def test_scripts_are_called_by_sha_and_reloaded_on_noscript(tmp_path: Path) -> None:
    """A restarted Redis has no scripts: the next EVALSHA loads and retries once,
    for single calls and for the sweeper's pipeline. Uses a redis-server of its own
    because SCRIPT FLUSH is server-wide."""
    for script in Scripts().all():
        assert script.source.startswith("-- _lib.lua")
        assert "-- KEYS[1]" in script.source  # every script has its KEYS/ARGV header
    server = RedisServer(data_dir=tmp_path)
    try:
        store = await open_store(test_settings(redis_url=server.url))
        account = new_account_id()
        await accounts.create_account(store, account, RateCard.parse(RATE_CARD))
        await credits.add_funds(store, account, "c1", 100_000, "ops_credit", "")
        await reservations.reserve(store, account, "k", "outbound")
        await store.redis.script_flush()
        charge = await debits.message(store, account, "m1", "outbound")
        assert charge.balance_micros == 100_000 - 7_500
        # Make the call due now, so the sweeper's pipeline meets NOSCRIPT.
        keys = store.account_keys(account)
        await store.redis.zadd(keys.shard.expiry, {f"{account}|k": 0})
        await store.redis.script_flush()
        assert await sweeper.expire_due_reservations(store) == 1
        assert await store.redis.script_exists(store.scripts.expire_call.sha) == [True]
        await store.redis.aclose()
    finally:
        server.stop()
