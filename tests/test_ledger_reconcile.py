"""reconcile and rebuild against the real Redis and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from metering import accounts, credits, debits
from metering.ledger.registry import issue_customer_token
from tests.fixtures_ledger import (
    LedgerWorld,
    Traffic,
    ledger_world,
)


@pytest.fixture
async def world() -> AsyncIterator[LedgerWorld]:
    """A private Redis and Postgres schema for one test."""
    async with ledger_world() as w:
        yield w


async def _drained_world(world: LedgerWorld, count: int = 3, ops: int = 60) -> list[str]:
    traffic = Traffic(world.store, seed=1)
    ids = await traffic.make_accounts(world.pool, count, 50_000_000)
    await traffic.run(ids, ops, concurrency=10)
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    return ids


async def test_reconcile_reports_tampered_and_deleted_rows_with_account_and_seq(
    world: LedgerWorld,
) -> None:
    a, b, c = await _drained_world(world)
    clean = world.cli("reconcile")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    await world.conn.execute(
        "UPDATE ledger_entries SET amount_micros = amount_micros - 1 "
        "WHERE account_id = $1 AND seq = 4",
        a,
    )
    await world.conn.execute("DELETE FROM ledger_entries WHERE account_id = $1 AND seq = 7", b)
    last_c = await world.conn.fetchval(
        "SELECT max(seq) FROM ledger_entries WHERE account_id = $1", c
    )
    await world.conn.execute(
        "DELETE FROM ledger_entries WHERE account_id = $1 AND seq = $2", c, last_c
    )

    out = world.cli("reconcile")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"DIFFERENCE account={a} seq=4 balance_chain: " in out.stdout, out.stdout
    assert any(f"account={b} seq=7 missing_entry" in line for line in lines), out.stdout
    # A deleted last row: Postgres stops short of Redis's seq, and the stream no
    # longer holds the entry, so it is missing, not lag.
    assert any(f"account={c} seq={last_c} missing_entry" in line for line in lines), out.stdout
    assert not any(f"account={a} seq=7" in line for line in lines)
    print("\n" + out.stdout)


async def test_reconcile_counts_unwritten_entries_as_lag_not_difference(world: LedgerWorld) -> None:
    (a,) = await _drained_world(world, count=1, ops=10)
    for n in range(5):
        await debits.message(world.store, a, f"late-{n}", "outbound")
    out = world.cli("reconcile")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lag: 5 entries not yet in Postgres, 5 behind the writers" in out.stdout, out.stdout
    # Redis moved without a ledger entry (a balance edited by hand): a difference.
    await world.store.redis.hincrby(world.store.account_keys(a).account, "balance", 3)
    out = world.cli("reconcile")
    assert out.returncode == 1
    assert f"account={a} seq=" in out.stdout and "balance" in out.stdout


async def test_rebuild_after_flush_continues_seq_and_balance(world: LedgerWorld) -> None:
    ids = await _drained_world(world, count=4, ops=80)
    token = await issue_customer_token(world.store, world.pool, ids[0], "dashboard")
    before = {a: await accounts.get_account(world.store, a) for a in ids}
    # An open call holds money; after the loss it is simply available again.
    # Recharge settings as the payments issue keeps them (its own table, 0005).
    await world.conn.execute(
        "INSERT INTO recharge_settings (account_id, enabled, amount_micros, threshold_micros, "
        "failure_email) VALUES ($1, true, 60000000, 10000000, 'ops@example.com')",
        ids[1],
    )
    await world.store.redis.flushdb()  # this test's own redis-server
    assert await world.store.redis.dbsize() == 0

    out = world.cli("rebuild")
    assert out.returncode == 0, out.stderr
    assert "4 accounts restored" in out.stdout and "1 customer tokens restored" in out.stdout
    for a in ids:
        after = await accounts.get_account(world.store, a)
        assert (after.balance_micros, after.seq, after.reserved_micros) == (
            before[a].balance_micros,
            before[a].seq,
            0,
        )
        assert after.rate_card == before[a].rate_card
        assert after.created_at_us == before[a].created_at_us
    assert await accounts.account_for_token(world.store, token) == ids[0]
    recharge = (await accounts.get_account(world.store, ids[1])).recharge
    assert (
        recharge["enabled"],
        recharge["amount_micros"],
        recharge["threshold_micros"],
        recharge["failure_email"],
    ) == (True, 60_000_000, 10_000_000, "ops@example.com")

    charge = await debits.message(world.store, ids[0], "after-rebuild", "outbound")
    assert charge.seq == before[ids[0]].seq + 1
    assert charge.balance_micros == before[ids[0]].balance_micros - charge.charged_micros
    credit = await credits.add_funds(world.store, ids[1], "after-rebuild", 1_000, "ops_credit")
    assert (credit.seq, credit.balance_micros) == (
        before[ids[1]].seq + 1,
        before[ids[1]].balance_micros + 1_000,
    )
    # Re-creating an account after the rebuild is still a harmless repeat.
    from devkit.testing import RATE_CARD
    from metering.ledger import registry
    from metering.rate_card import RateCard

    _, created = await registry.create_account(
        world.store, world.pool, ids[2], RateCard.parse(RATE_CARD)
    )
    assert created is False

    # The writer recreates its consumer group on the new Redis and carries on.
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    row = await world.conn.fetchrow(
        "SELECT * FROM ledger_entries WHERE account_id = $1 AND seq = $2", ids[0], charge.seq
    )
    assert row["balance_after_micros"] == charge.balance_micros
    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr
