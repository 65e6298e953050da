"""The ledger writer against the real Redis and the real Postgres: drain,
SIGKILL at random points, and a Postgres outage under live traffic."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from tests.fixtures_ledger import (
    LedgerWorld,
    Traffic,
    assert_postgres_matches,
    kill,
    ledger_world,
)


@pytest.fixture
async def world() -> AsyncIterator[LedgerWorld]:
    """A private Redis and Postgres schema for one test."""
    async with ledger_world() as w:
        yield w


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
    print(
        f"\nwriter: {ENTRIES + 250} rows in {elapsed_s:.2f}s (process start included): "
        f"{done.stdout.strip()}"
    )

    rows = await world.postgres_entries()
    assert_postgres_matches(traffic.expected, rows)
    for key, fields in stream.items():
        assert (
            rows[key]["at_us"] == int(fields["at_us"]) and rows[key]["detail"] == fields["detail"]
        ), key
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


async def _pending(world: LedgerWorld) -> int:
    from metering.keys import all_shards

    total = 0
    for shard in all_shards(world.settings.shard_count):
        info = await world.store.redis.xpending(shard.ledger, world.settings.ledger_consumer_group)
        total += int(info["pending"])
    return total


async def _until_writing(world: LedgerWorld) -> None:
    """Until the writer just started commits a batch (it is then in its loop)."""
    before = await world.conn.fetchval("SELECT count(*) FROM ledger_entries")
    deadline = time.monotonic() + 30
    while await world.conn.fetchval("SELECT count(*) FROM ledger_entries") == before:
        assert time.monotonic() < deadline, "the writer did not start writing"
        await asyncio.sleep(0.02)


async def test_writer_killed_mid_batch_loses_nothing_and_doubles_nothing(
    world: LedgerWorld,
) -> None:
    rng = random.Random(9)
    traffic = Traffic(world.store, seed=9)
    accounts = await traffic.make_accounts(world.pool, 100, 1_000_000_000)
    await traffic.run(accounts, 6_000)
    small_batches = {"ledger_batch_rows_max": 300, "ledger_batch_wait_ms": 30}
    pending_at_kill = []
    # Kills 1-3 restart under the same consumer name (it re-reads its own pending
    # entries); kill 4 runs under another name, whose pending entries the final
    # writer must XAUTOCLAIM once they are idle.
    for consumer in ("writer-0-of-1", "writer-0-of-1", "writer-0-of-1", "writer-other"):
        writer = world.start_writer("--consumer", consumer, **small_batches)
        flowing = asyncio.create_task(traffic.run(accounts, 1_500, concurrency=50))
        await _until_writing(world)  # a loaded machine starts Python slowly
        await asyncio.sleep(rng.uniform(0.05, 0.3))  # a random point while batches flow
        kill(writer)
        pending_at_kill.append(await _pending(world))
        await flowing
    # Entries read but not acknowledged when killed: the kills hit mid-batch.
    assert any(pending_at_kill), pending_at_kill
    assert await world.conn.fetchval("SELECT count(*) FROM ledger_entries") > 0

    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    assert await _pending(world) == 0
    assert_postgres_matches(traffic.expected, await world.postgres_entries())
    assert await world.conn.fetchval("SELECT count(*) FROM ledger_conflicts") == 0
    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"\npending entries at each SIGKILL: {pending_at_kill}")


async def test_postgres_outage_authorize_keeps_answering_then_ledger_catches_up(
    world: LedgerWorld,
) -> None:
    import httpx

    from devkit.testing import RATE_CARD, GatewayProcess, TcpProxy
    from tests.conftest import OPS, SWITCH, url_port, url_with_port
    from tests.fixtures_ledger import Expected

    proxy = TcpProxy("127.0.0.1", url_port(world.settings.database_url))
    proxy.start()
    # Gateway and writer reach Postgres only through the proxy we cut.
    via_proxy = url_with_port(world.settings.database_url, proxy.port)
    gateway = GatewayProcess(world.settings.replace(database_url=via_proxy))
    writer = world.start_writer(
        database_url=via_proxy, ledger_retry_max=1_000, ledger_retry_backoff_max_s=0.3
    )
    expected: dict[tuple[str, int], Expected] = {}
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            accounts = []
            for i in range(5):
                account_id = f"outage-{i}"
                r = await http.post(
                    "/v1/accounts",
                    headers=OPS,
                    json={"account_id": account_id, "rate_card": RATE_CARD},
                )
                assert r.status_code == 201, r.text
                r = await http.post(
                    f"/v1/accounts/{account_id}/credits",
                    headers=OPS,
                    json={"credit_id": "initial", "amount_micros": 100_000_000, "reason": "funds"},
                )
                assert r.status_code == 200, r.text
                expected[(account_id, r.json()["seq"])] = Expected(
                    "funds_added", 100_000_000, r.json()["balance_micros"], "initial"
                )
                accounts.append(account_id)

            async def texts(first: int, count: int) -> None:
                async def one(n: int) -> None:
                    account_id = accounts[n % len(accounts)]
                    r = await http.post(
                        "/v1/messages",
                        headers=SWITCH,
                        json={
                            "account_id": account_id,
                            "message_id": f"m{n}",
                            "direction": "outbound",
                        },
                    )
                    assert r.status_code == 200, r.text
                    b = r.json()
                    expected[(account_id, b["seq"])] = Expected(
                        "sms_outbound", -b["charged_micros"], b["balance_micros"], f"m{n}"
                    )

                await asyncio.gather(*(one(n) for n in range(first, first + count)))

            await texts(0, 200)
            proxy.stop()  # Postgres is gone for the gateway and the writer
            began = time.monotonic()
            await texts(200, 400)  # the authorize path keeps answering
            r = await http.get(f"/v1/accounts/{accounts[0]}/activity", headers=OPS)
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
            await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - began)))
            lag = (await http.get("/v1/ops/ledger-lag", headers=OPS)).json()
            assert lag["entries_behind"] > 0 and lag["oldest_age_ms"] >= 1_000, lag
            assert writer.poll() is None, "the writer waits for Postgres, it does not die"

            proxy.start()
            deadline = time.monotonic() + 30
            while (await http.get("/v1/ops/ledger-lag", headers=OPS)).json()["entries_behind"]:
                assert time.monotonic() < deadline, "the ledger did not catch up"
                await asyncio.sleep(0.1)
            caught_up_s = time.monotonic() - began
            r = await http.get(f"/v1/accounts/{accounts[0]}/activity", headers=OPS)
            assert r.status_code == 200, r.text
    finally:
        kill(writer)
        gateway.stop()
        proxy.close()
    assert_postgres_matches(expected, await world.postgres_entries())
    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"\noutage: {len(expected)} entries, caught up {caught_up_s:.1f}s after the cut")


async def test_two_writers_split_the_shards(world: LedgerWorld) -> None:
    traffic = Traffic(world.store, seed=2)
    accounts = await traffic.make_accounts(world.pool, 60, 1_000_000_000)
    await traffic.run(accounts, 3_000)
    writers = [
        world.start_writer("--drain", "--writer-index", str(i), "--writer-count", "2")
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=60)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    inserted = [int(out.split(": ")[1].split()[0]) for out in outputs]
    # Each wrote its own shards' entries, none twice.
    assert all(n > 0 for n in inserted) and sum(inserted) == len(traffic.expected), outputs
    assert_postgres_matches(traffic.expected, await world.postgres_entries())


async def test_writer_inside_the_gateway_moves_entries(world: LedgerWorld) -> None:
    import httpx

    from devkit.testing import GatewayProcess
    from tests.conftest import OPS

    traffic = Traffic(world.store, seed=3)
    (account_id,) = await traffic.make_accounts(world.pool, 1, 5_000_000)
    await traffic.run([account_id], 20, concurrency=5)
    gateway = GatewayProcess(world.settings.replace(ledger_writer_in_gateway=True))
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            deadline = time.monotonic() + 15
            while True:
                r = await http.get(f"/v1/accounts/{account_id}/activity", headers=OPS)
                if r.status_code == 200 and len(r.json()["entries"]) == 21:
                    break
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.1)
    finally:
        gateway.stop()
    assert_postgres_matches(traffic.expected, await world.postgres_entries())


async def test_entries_committed_but_not_acked_are_not_inserted_twice(world: LedgerWorld) -> None:
    """The narrowest crash window, made on purpose: COMMIT done, XACK never sent."""
    from metering.ledger.database import connect
    from metering.ledger.writer import STAGING_DDL, LedgerWriter, write_batch
    from metering.ledger_entries import LedgerEntry

    traffic = Traffic(world.store, seed=6)
    accounts = await traffic.make_accounts(world.pool, 10, 1_000_000_000)
    await traffic.run(accounts, 300)
    # A writer reads and commits as "writer-0-of-1", then dies before acknowledging.
    dead = LedgerWriter(world.store, list(range(world.settings.shard_count)), "writer-0-of-1")
    await dead.ensure_groups()
    answer = await world.store.redis.xreadgroup(
        world.settings.ledger_consumer_group,
        "writer-0-of-1",
        {s: ">" for s in dead.streams},
        count=10_000,
    )
    entries = [LedgerEntry.from_stream(f) for _, messages in answer for _, f in messages]
    assert len(entries) == len(traffic.expected)
    conn = await connect(world.settings)
    await conn.execute(STAGING_DDL)
    assert await write_batch(conn, entries) == (len(entries), 0)
    await conn.close()

    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    # Everything redelivered (re-read as its own pending entries), nothing inserted again.
    assert f": 0 rows inserted, {len(entries)} read, 0 conflicting" in done.stdout, done.stdout
    assert await _pending(world) == 0 and await world.stream_lengths() == 0
    assert_postgres_matches(traffic.expected, await world.postgres_entries())


async def test_writer_stops_promptly_during_an_outage_and_acks_nothing(world: LedgerWorld) -> None:
    import signal

    from devkit.testing import free_port
    from tests.conftest import url_with_port

    traffic = Traffic(world.store, seed=8)
    accounts = await traffic.make_accounts(world.pool, 5, 100_000_000)
    await traffic.run(accounts, 50, concurrency=10)
    dead = url_with_port(world.settings.database_url, free_port())
    writer = world.start_writer(database_url=dead, ledger_retry_max=1_000)
    await asyncio.sleep(1.5)
    assert writer.poll() is None, "still retrying"
    writer.send_signal(signal.SIGTERM)
    writer.wait(timeout=5)
    assert writer.returncode == 3, writer.stderr.read() if writer.stderr else ""
    assert await _pending(world) == len(traffic.expected)  # read, never acknowledged
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    assert_postgres_matches(traffic.expected, await world.postgres_entries())
