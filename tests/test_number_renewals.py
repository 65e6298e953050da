"""Phone numbers renew themselves: with a period of a couple of seconds, every
number bought is charged once per period, also with two schedulers running and
one killed (SIGKILL) while numbers are due; a number the balance cannot pay is
suspended (calls naming it refused), retried, and released after the grace;
every charge is in the ledger and reconcile is clean."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from devkit.testing import RATE_CARD, ROOT
from metering import accounts, credits, debits, phone_numbers, reservations
from metering.errors import NumberSuspended, UnknownNumber
from metering.ledger import registry
from metering.ledger.rebuild import rebuild
from metering.ledger.reconcile import reconcile
from metering.notify import alerts
from metering.numbers.scheduler import NumberScheduler
from metering.rate_card import RateCard
from tests.conftest import new_account_id
from tests.fixtures_ledger import LedgerWorld, kill, ledger_world

PERIOD_S = 2.0
RENEWAL = RATE_CARD["number_renewal_micros"]
PURCHASE = RATE_CARD["number_purchase_micros"]
FAST = dict(
    number_renewal_period_s=PERIOD_S,
    number_scheduler_poll_interval_s=0.05,
    number_scheduler_batch_max=4,
    stream_claim_idle_ms=500,
)


async def new_account(world: LedgerWorld, micros: int) -> str:
    account = new_account_id("num")
    await registry.create_account(world.store, world.pool, account, RateCard.parse(RATE_CARD))
    if micros:
        await credits.add_funds(world.store, account, "start", micros, "ops_credit", "test")
    return account


def start_scheduler(world: LedgerWorld, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metering",
            "--log-level",
            "warning",
            "number-scheduler",
            "--consumer",
            name,
        ],
        cwd=ROOT,
        env=world.env(),
        stdout=subprocess.DEVNULL,
        stderr=open(f"/tmp/sched-{name}.log", "w"),
        text=True,  # noqa: SIM115
    )


async def renewals(world: LedgerWorld) -> list[Any]:
    return list(
        await world.conn.fetch(
            "SELECT account_id, number, renewal_id, period, source, at_us FROM number_renewals "
            "ORDER BY account_id, number, period"
        )
    )


async def assert_ledger_complete_and_reconciled(world: LedgerWorld) -> list[Any]:
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    report = await reconcile(world.store, world.conn)
    assert report.ok, [d.line() for d in report.differences]
    return list(
        await world.conn.fetch(
            "SELECT account_id, request_id, amount_micros FROM ledger_entries "
            "WHERE item = 'number_renewal'"
        )
    )


async def test_numbers_renew_once_per_period_with_two_schedulers_one_killed() -> None:
    async with ledger_world(**FAST) as world:
        accounts = [await new_account(world, 50 * RENEWAL) for _ in range(4)]
        bought: dict[tuple[str, str], int] = {}
        for i, account in enumerate(accounts):
            for j in range(5):  # 20 numbers: several batches per due moment
                number = f"+1555{i:03d}{j:04d}"
                await debits.number_purchase(world.store, account, f"p-{j}", number)
                bought[(account, number)] = time.time_ns() // 1_000
        first = start_scheduler(world, "a")
        second = start_scheduler(world, "b")
        try:
            # Kill one while the first renewals fall due and are being charged.
            await asyncio.sleep(PERIOD_S + 0.05)
            first.send_signal(signal.SIGKILL)
            first.wait()
            await asyncio.sleep(2 * PERIOD_S + 0.5)
            third = start_scheduler(world, "c")  # a restart beside the survivor
            await asyncio.sleep(PERIOD_S)
            for proc in (second, third):
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            for proc in (first, second):
                kill(proc)  # type: ignore[arg-type]
        stopped = time.time_ns() // 1_000
        rows = await renewals(world)
        ledger = await assert_ledger_complete_and_reconciled(world)

    numbers: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        numbers.setdefault((r["account_id"], r["number"]), []).append(r)
    assert set(numbers) == set(bought)
    for key, held in numbers.items():
        periods = [r["period"] for r in held]
        # One renewal per period, none skipped, none twice, each once due.
        assert periods == list(range(1, len(periods) + 1)), (key, periods)
        elapsed_periods = (stopped - bought[key]) / 1e6 / PERIOD_S
        assert int(elapsed_periods) - 1 <= len(periods) <= int(elapsed_periods) + 1, key
        for r in held:
            assert r["source"] == "automatic"
    # Every charge is one ledger entry with its own id, nothing charged twice.
    ids = [r["request_id"] for r in ledger]
    assert len(ids) == len(set(ids)) == len(rows)
    assert {r["renewal_id"] for r in rows} == set(ids)
    assert all(r["amount_micros"] == -RENEWAL for r in ledger)


async def test_unpaid_number_is_suspended_retried_then_released_after_grace() -> None:
    settings = dict(
        FAST,
        number_renewal_period_s=1.0,
        number_release_grace_s=2.0,
        number_renewal_retry_schedule_s="0.4",
    )
    async with ledger_world(**settings) as world:
        poor = await new_account(world, PURCHASE + RENEWAL // 2)
        rescued = await new_account(world, PURCHASE + RENEWAL // 2)
        await debits.number_purchase(world.store, poor, "p1", "+15550001")
        await debits.number_purchase(world.store, rescued, "p1", "+15550002")
        scheduler = NumberScheduler(world.store, world.pool, world.settings, consumer="t")
        await scheduler.reader.ensure_groups()

        async def run_until(predicate: Any, timeout_s: float = 8.0) -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                await scheduler.step()
                if await predicate():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the scheduler did not get there in time")

        async def status(account: str, number: str) -> str:
            row = await world.conn.fetchrow(
                "SELECT status, failed_attempts FROM numbers WHERE account_id = $1 AND number = $2",
                account,
                number,
            )
            return f"{row['status']}:{row['failed_attempts']}" if row else "none"

        async def both_suspended() -> bool:
            return (await status(poor, "+15550001")).startswith("suspended") and (
                await status(rescued, "+15550002")
            ).startswith("suspended")

        await run_until(both_suspended)
        assert await phone_numbers.held_numbers(world.store, poor) == {"+15550001": "suspended"}
        with pytest.raises(NumberSuspended):
            await reservations.reserve(world.store, poor, "call-1", "inbound", "+15550001")
        with pytest.raises(NumberSuspended):
            await debits.message(world.store, poor, "sms-1", "inbound", "+15550001")

        # Funds arrive for one account during the grace: the retry renews it.
        await credits.add_funds(world.store, rescued, "top-up", 5 * RENEWAL, "ops_credit", "t")

        async def settled() -> bool:
            return (
                await status(poor, "+15550001") != "suspended:1"
                and (await status(poor, "+15550001")).startswith("released")
                and (await status(rescued, "+15550002")).startswith("active")
            )

        await run_until(settled)
        assert await phone_numbers.held_numbers(world.store, poor) == {}
        assert await phone_numbers.held_numbers(world.store, rescued) == {"+15550002": "active"}
        with pytest.raises(UnknownNumber):
            await reservations.reserve(world.store, poor, "call-2", "inbound", "+15550001")
        await reservations.reserve(world.store, rescued, "call-3", "inbound", "+15550002")

        events = await world.conn.fetch(
            "SELECT account_id, type, data->>'attempt' AS attempt, email_status "
            "FROM account_events ORDER BY at_us"
        )
        poor_events = [(e["type"], e["attempt"]) for e in events if e["account_id"] == poor]
        # Suspended at the due time, retried, released at the end of the grace.
        assert poor_events[0] == ("number.renewal_failed", "1")
        assert len(poor_events) >= 3
        assert all(t == "number.renewal_failed" for t, _ in poor_events[:-1])
        assert poor_events[-1] == ("number.released", None)
        rescued_types = [e["type"] for e in events if e["account_id"] == rescued]
        assert rescued_types[0] == "number.renewal_failed" and "number.renewed" in rescued_types
        # The first failure (suspension) and the release send an email; retries do not.
        emailed = [
            (e["type"], e["attempt"])
            for e in events
            if e["account_id"] == poor and e["email_status"] == "pending"
        ]
        assert emailed == [("number.renewal_failed", "1"), ("number.released", None)]
        ledger = await assert_ledger_complete_and_reconciled(world)
        assert {r["account_id"] for r in ledger} == {rescued}


async def test_rebuild_restores_numbers_and_alert_settings() -> None:
    async with ledger_world(**FAST) as world:
        account = await new_account(world, 10 * RENEWAL)
        await alerts.save_settings(
            world.store,
            world.pool,
            account,
            {"low_balance_threshold_micros": 3 * RENEWAL, "email": "a@example.com"},
        )
        await debits.number_purchase(world.store, account, "p1", "+15550011")
        await debits.number_purchase(world.store, account, "p2", "+15550012")
        scheduler = NumberScheduler(world.store, world.pool, world.settings, consumer="t")
        await scheduler.reader.ensure_groups()
        await scheduler.step()
        await phone_numbers.change_status(world.store, account, "+15550012", "suspend")
        await world.conn.execute(
            "UPDATE numbers SET status = 'suspended' WHERE number = '+15550012'"
        )
        assert world.cli("ledger-writer", "--drain").returncode == 0
        world.redis_server.flush()
        await world.store.scripts.load(world.store.redis)

        report = await rebuild(world.store, world.conn)
        assert report.numbers_restored == 2
        assert await phone_numbers.held_numbers(world.store, account) == {
            "+15550011": "active",
            "+15550012": "suspended",
        }
        view = await accounts.get_account(world.store, account)
        assert view.alerts["low_balance_threshold_micros"] == 3 * RENEWAL
        assert view.alerts["email"] == "a@example.com"
        with pytest.raises(NumberSuspended):
            await reservations.reserve(world.store, account, "c1", "inbound", "+15550012")
        await reservations.reserve(world.store, account, "c2", "inbound", "+15550011")
