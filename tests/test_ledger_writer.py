"""The ledger writer against the real Redis and the real Postgres: drain,
SIGKILL at random points, and a Postgres outage under live traffic."""

from __future__ import annotations

import random
import time

from tests.fixtures_ledger import (
    LedgerWorld,
    Traffic,
    assert_postgres_matches,
    kill,
    world,  # noqa: F401  (fixture)
)

ENTRIES = 20_000


async def test_writer_drains_20000_mixed_entries_entry_for_entry(world: LedgerWorld) -> None:
    traffic = Traffic(world.store, seed=4)
    accounts = await traffic.make_accounts(world.pool, 250, 1_000_000_000)
    await traffic.run(accounts, ENTRIES)
    assert len(traffic.expected) == ENTRIES + 250
    # What Redis wrote, field for field (at_us included), before the writer trims it.
    stream = await world.stream_entries()
    assert len(stream) == ENTRIES + 250

    began = time.monotonic()
    done = world.cli("ledger-writer", "--drain")
    elapsed_s = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    print(f"\nwriter: {ENTRIES + 250} rows in {elapsed_s:.2f}s (process start included): "
          f"{done.stdout.strip()}")

    rows = await world.postgres_entries()
    assert_postgres_matches(traffic.expected, rows)
    for key, fields in stream.items():
        assert rows[key]["at_us"] == int(fields["at_us"]) and rows[key]["detail"] == fields[
            "detail"], key
    # Redis's live state equals each account's last Postgres entry.
    for account_id in accounts:
        h = await world.store.redis.hgetall(world.store.account_keys(account_id).account)
        last = max(seq for (a, seq) in rows if a == account_id)
        assert int(h["seq"]) == last
        assert int(h["balance"]) == rows[(account_id, last)]["balance_after_micros"]
    assert await world.stream_lengths() == 0, "committed entries are trimmed from the streams"

    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 differences" in check.stdout
