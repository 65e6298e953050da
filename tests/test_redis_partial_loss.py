"""A Redis that comes back without its last second: the ledger check
(metering/ledger/recovery.py) fast-forwards every account Redis lost entries of,
from the Postgres ledger, so no seq is reused, the balances are the ledger's,
live calls keep their reservations and calls whose closing Redis lost are
settled as the ledger says. Checked three ways: by a gateway that runs across
the crash (its restart fence), by a gateway started after it, and by rebuild.

The fault is made with a real redis-server and its append-only file
(appendfsync everysec). A SIGKILL of the process alone loses nothing (what
Redis wrote sits in the page cache); what a crash of the *host* loses is the
tail of the file written after the last fsync. The test stands for that by
cutting the file back to its length at a moment T, after the ledger writer has
committed what came after T to Postgres, then starting Redis on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx

from devkit.testing import RATE_CARD, GatewayProcess
from metering import accounts, credits, debits, reservations
from metering.ledger import registry
from metering.rate_card import RateCard
from tests.conftest import OPS, SWITCH
from tests.fixtures_ledger import LedgerWorld, ledger_world

AOF = (
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--auto-aof-rewrite-percentage",
    "0",  # one incremental file for the whole test
)


async def written_length(world: LedgerWorld) -> int:
    """The file's length once everything answered so far is written to it (Redis
    may hold writes back for a moment while a slow fsync runs)."""
    for _ in range(200):
        info = await world.store.redis.info("persistence")
        if int(info["aof_buffer_length"]) == 0 and int(info["aof_pending_bio_fsync"]) == 0:
            return world.redis_server.append_only_file().stat().st_size
        await asyncio.sleep(0.05)
    raise AssertionError(f"Redis did not write its append-only buffer: {info}")


@dataclasses.dataclass
class Loss:
    busy: str  # debited after T
    calls: str  # a call kept open, a call committed after T, a call opened after T
    ledger: dict[str, tuple[int, int]]  # account -> (last seq, balance) in Postgres
    committed_micros: int  # what the commit after T charged
    kept_held_micros: int  # what the call open across the loss holds


async def lose_the_last_second(world: LedgerWorld, before_crash: Any = None) -> Loss:
    """Changes before T, changes after T (all written to Postgres), then a Redis
    that comes back at T. `before_crash` runs just before the crash."""
    store = world.store
    card = RateCard.parse(RATE_CARD)
    busy, calls = "loss-busy", "loss-calls"
    for a in (busy, calls):
        await registry.create_account(store, world.pool, a, card)
        await credits.add_funds(store, a, "funds", 50_000_000, "ops_credit")
    await debits.message(store, busy, "before", "outbound")
    kept = await reservations.reserve(store, calls, "kept", "outbound")
    await reservations.reserve(store, calls, "ends-later", "outbound")

    cut_at = await written_length(world)  # T: what a host crash would keep
    for n in range(5):
        await debits.message(store, busy, f"lost-{n}", "outbound")
    committed = await reservations.commit(store, calls, "ends-later", 42)
    await reservations.reserve(store, calls, "opened-later", "inbound")
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    ledger = {
        r["account_id"]: (r["seq"], r["balance_after_micros"])
        for r in await world.conn.fetch(
            "SELECT DISTINCT ON (account_id) account_id, seq, balance_after_micros "
            "FROM ledger_entries ORDER BY account_id, seq DESC"
        )
    }
    if before_crash is not None:
        await before_crash()
    world.redis_server.crash()
    with world.redis_server.append_only_file().open("r+b") as f:
        f.truncate(cut_at)
    world.redis_server.start()
    await store.redis.connection_pool.disconnect()  # the test's own client
    # Redis is now behind the ledger for both accounts.
    for a in (busy, calls):
        assert int(await store.redis.hget(store.account_keys(a).account, "seq")) < ledger[a][0]
    return Loss(busy, calls, ledger, committed.charged_micros, kept.reserved_for_call_micros)


async def assert_in_line_with_the_ledger(world: LedgerWorld, loss: Loss) -> None:
    for a in (loss.busy, loss.calls):
        view = await accounts.get_account(world.store, a)
        assert (view.seq, view.balance_micros) == loss.ledger[a], a
    view = await accounts.get_account(world.store, loss.calls)
    # The call open across the loss goes on; the one committed after T is settled.
    assert (view.open_calls, view.reserved_micros) == (1, loss.kept_held_micros)


async def assert_traffic_continues_the_ledger(
    world: LedgerWorld, http: httpx.AsyncClient, loss: Loss
) -> None:
    r = await http.post(
        "/v1/messages",
        headers=SWITCH,
        json={"account_id": loss.busy, "message_id": "after", "direction": "outbound"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["seq"] == loss.ledger[loss.busy][0] + 1
    # The switch's retry of the commit Redis lost replays the ledger's charge.
    r = await http.post(
        "/v1/calls/ends-later/commit",
        headers=SWITCH,
        json={"account_id": loss.calls, "duration_seconds": 42},
    )
    assert r.status_code == 200 and r.json()["charged_micros"] == loss.committed_micros, r.text
    # A call opened in the lost second is unknown: its commit cannot be charged.
    r = await http.post(
        "/v1/calls/opened-later/commit",
        headers=SWITCH,
        json={"account_id": loss.calls, "duration_seconds": 5},
    )
    assert r.status_code == 404 and r.json()["error"] == "unknown_call", r.text
    r = await http.post(
        "/v1/calls/kept/commit",
        headers=SWITCH,
        json={"account_id": loss.calls, "duration_seconds": 60},
    )
    assert r.status_code == 200, r.text
    assert r.json()["seq"] == loss.ledger[loss.calls][0] + 1
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    assert await world.conn.fetchval("SELECT count(*) FROM ledger_conflicts") == 0
    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr


async def test_gateway_running_across_a_redis_crash_fast_forwards_before_money_moves() -> None:
    async with ledger_world(redis_args=AOF) as world:
        gateway = GatewayProcess(world.settings)
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:

                async def gateway_in_use() -> None:
                    r = await http.get("/v1/accounts/loss-busy", headers=OPS)
                    assert r.status_code == 200, r.text

                loss = await lose_the_last_second(world, gateway_in_use)
                # Requests on connections that died with Redis answer 503 (the switch
                # retries); the first on a new connection waits for the check.
                for _ in range(20):
                    r = await http.get(f"/v1/accounts/{loss.busy}", headers=OPS)
                    if r.status_code != 503:
                        break
                assert r.status_code == 200, r.text
                assert (r.json()["seq"], r.json()["balance_micros"]) == loss.ledger[loss.busy]
                await assert_in_line_with_the_ledger(world, loss)
                await assert_traffic_continues_the_ledger(world, http, loss)
        finally:
            gateway.stop()


async def test_gateway_start_fast_forwards_accounts_redis_lost_entries_of() -> None:
    async with ledger_world(redis_args=AOF) as world:
        loss = await lose_the_last_second(world)
        gateway = GatewayProcess(world.settings)
        try:
            await assert_in_line_with_the_ledger(world, loss)
            async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
                await assert_traffic_continues_the_ledger(world, http, loss)
        finally:
            gateway.stop()


async def test_rebuild_fast_forwards_accounts_redis_still_has_but_lost_entries_of() -> None:
    async with ledger_world(redis_args=AOF) as world:
        loss = await lose_the_last_second(world)
        out = world.cli("rebuild")
        assert out.returncode == 0, out.stderr
        assert "2 of them fast-forwarded to the ledger" in out.stdout, out.stdout
        assert "1 open calls settled" in out.stdout, out.stdout
        await assert_in_line_with_the_ledger(world, loss)
        # Once is enough: a second rebuild finds nothing behind.
        again = world.cli("rebuild")
        assert "0 of them fast-forwarded" in again.stdout, again.stdout
        # rebuild marked this Redis checked: a gateway starting now has nothing to do.
        gateway = GatewayProcess(world.settings)
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
                await assert_traffic_continues_the_ledger(world, http, loss)
        finally:
            gateway.stop()


async def test_a_call_whose_release_was_lost_holds_no_more_than_the_balance() -> None:
    # A release that charged nothing leaves no ledger entry: after a host crash
    # that lost it, the ledger check keeps the call open. The balance spent since
    # the release may be below its hold; available must still not go below zero.
    async with ledger_world(redis_args=AOF) as world:
        store = world.store
        account = "loss-released"
        await registry.create_account(store, world.pool, account, RateCard.parse(RATE_CARD))
        await credits.add_funds(store, account, "funds", 1_000_000, "ops_credit")
        call = await reservations.reserve(store, account, "released", "outbound")
        held = call.reserved_for_call_micros
        cut_at = await written_length(world)  # T: the release and the spending after it are lost
        await reservations.release(store, account, "released")
        n = 0
        while (await accounts.get_account(store, account)).balance_micros >= held:
            await debits.message(store, account, f"spend-{n}", "outbound")
            n += 1
        done = world.cli("ledger-writer", "--drain")
        assert done.returncode == 0, done.stderr
        world.redis_server.crash()
        with world.redis_server.append_only_file().open("r+b") as f:
            f.truncate(cut_at)
        world.redis_server.start()
        await store.redis.connection_pool.disconnect()
        out = world.cli("rebuild")
        assert out.returncode == 0, out.stderr
        view = await accounts.get_account(store, account)
        assert view.open_calls == 1  # the lost release: the call goes on
        assert 0 <= view.reserved_micros <= view.balance_micros, view
        assert view.reserved_micros == view.balance_micros < held
