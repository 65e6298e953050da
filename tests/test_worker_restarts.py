"""Every worker rides out a Redis restart on its own, with bounded backoff, and
says so in its log: the standalone ledger writer, the standalone sweeper and the
recharge worker. Redis is a private redis-server the test kills with SIGKILL and
starts again on the same port (with its append-only file where the test needs
its data back)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from devkit.testing import PER_SECOND_RATE_CARD, ROOT
from metering import accounts, reservations
from tests.fixtures_ledger import LedgerWorld, Traffic, assert_postgres_matches, kill, ledger_world

# Redis keeps its data across a SIGKILL (everything written reaches the page cache).
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
DOWN_S = 1.0
BACKOFF_MAX_S = 0.4


async def wait_for(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def crash_redis_for_a_while(world: LedgerWorld) -> None:
    world.redis_server.crash()
    await asyncio.sleep(DOWN_S)  # the workers meet a dead Redis, more than once
    world.redis_server.start()
    # The test's own client drops its dead connections (the workers must cope alone).
    await world.store.redis.connection_pool.disconnect()


def outage_lines(log: str, worker: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if worker in line and ("Redis unavailable" in line or "Redis back after" in line)
    ]


async def test_standalone_ledger_writer_rides_out_a_redis_restart_and_says_so() -> None:
    async with ledger_world(redis_args=AOF, outage_backoff_max_s=BACKOFF_MAX_S) as world:
        traffic = Traffic(world.store, seed=14)
        ids = await traffic.make_accounts(world.pool, 8, 1_000_000_000)
        await traffic.run(ids, 200, concurrency=20)
        writer = world.start_writer()
        try:

            async def written() -> bool:
                count = await world.conn.fetchval("SELECT count(*) FROM ledger_entries")
                return int(count) == len(traffic.expected)

            await wait_for(written)
            await crash_redis_for_a_while(world)
            await traffic.run(ids, 200, concurrency=20)
            await wait_for(written)
            assert writer.poll() is None, "the writer died with Redis"
            writer.send_signal(signal.SIGTERM)
            _, log = writer.communicate(timeout=10)
        finally:
            kill(writer)
        assert writer.returncode == 0, log
        lines = outage_lines(log, "ledger writer writer-0-of-1")
        assert len(lines) == 2 and "unavailable" in lines[0] and "back after" in lines[1], log
        assert_postgres_matches(traffic.expected, await world.postgres_entries())


async def test_standalone_sweeper_rides_out_a_redis_restart_and_says_so() -> None:
    from metering import credits
    from metering.ledger import registry
    from metering.rate_card import RateCard

    async with ledger_world(
        redis_args=AOF,
        outage_backoff_max_s=BACKOFF_MAX_S,
        reservation_sweep_interval_s=0.1,
        call_grant_s=1,
        call_validity_grace_s=0,
    ) as world:
        account_id = "sweep-restart"
        await registry.create_account(
            world.store, world.pool, account_id, RateCard.parse(PER_SECOND_RATE_CARD)
        )
        await credits.add_funds(world.store, account_id, "funds", 10_000_000, "ops_credit")
        sweeper = subprocess.Popen(
            [sys.executable, "-m", "metering", "--log-level", "info", "sweep"],
            cwd=ROOT,
            env=world.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            async def swept() -> bool:
                view = await accounts.get_account(world.store, account_id)
                return view.reserved_micros == 0

            # The sweeper is at work (a loaded machine starts Python slowly).
            await reservations.reserve(world.store, account_id, "before", "outbound")
            await wait_for(swept, timeout_s=30)
            await crash_redis_for_a_while(world)
            # A call forgotten after the restart is still expired, with no request.
            await reservations.reserve(world.store, account_id, "after-restart", "outbound")
            await wait_for(swept, timeout_s=10)
            assert sweeper.poll() is None, "the sweeper died with Redis"
            sweeper.send_signal(signal.SIGTERM)
            _, log = sweeper.communicate(timeout=10)
        finally:
            kill(sweeper)
        view = await accounts.get_account(world.store, account_id)
        assert view.balance_micros == 10_000_000 - 2 * 1_000  # each 1 s grant, charged
        lines = outage_lines(log, "sweeper")
        assert len(lines) == 2 and "unavailable" in lines[0] and "back after" in lines[1], log
        assert "Traceback" not in log, log


async def test_recharge_worker_rides_out_a_redis_restart_that_lost_its_groups(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No append-only file: Redis comes back empty, without the worker's consumer
    groups. The worker must recreate them and take the next request."""
    from metering.payments.recharge_worker import RechargeWorker
    from metering.payments.stripe_client import build_stripe_client, close_stripe_client

    caplog.set_level(logging.WARNING, logger="metering.payments.recharge_worker")
    async with ledger_world(outage_backoff_max_s=BACKOFF_MAX_S) as world:
        from metering.store import open_store

        client = build_stripe_client(world.settings)
        store = await open_store(world.settings)  # the worker's own client
        worker = RechargeWorker(store, world.pool, client, world.settings, consumer="w")
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.sleep(0.3)
            await crash_redis_for_a_while(world)
            shard = world.store.account_keys("after-restart").shard
            # A recharge request as the scripts write it (lua/_lib.lua), made after
            # the restart.
            await world.store.redis.xadd(
                shard.recharge,
                {
                    "account_id": "after-restart",
                    "amount_micros": "60000000",
                    "available_micros": "1",
                    "threshold_micros": "10000000",
                    "at_us": "1700000000000000",
                },
            )

            async def taken() -> bool:
                return bool(
                    await world.conn.fetchval(
                        "SELECT count(*) FROM recharge_episodes WHERE account_id = $1",
                        "after-restart",
                    )
                )

            await wait_for(taken, timeout_s=10)
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=10)
            await close_stripe_client(client)
            await store.redis.aclose()
        log = "\n".join(r.getMessage() for r in caplog.records)
        lines = outage_lines(log, "recharge worker w")
        assert len(lines) == 2 and "unavailable" in lines[0] and "back after" in lines[1], log
