"""Workers expose their metrics on a port of their own and keep a heartbeat in
Redis; the continuous reconcile finds a drift within a pass and says so as a
metric and in its summary."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.testing import ROOT, free_port
from metering.heartbeats import read_heartbeats
from metering.keys import reconcile_summary_key
from tests.fixtures_ledger import LedgerWorld, Traffic, ledger_world


@pytest.fixture
async def world() -> AsyncIterator[LedgerWorld]:
    async with ledger_world() as w:
        yield w


def start(world: LedgerWorld, *args: str, **changes: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "metering", "--log-level", "info", *args],
        cwd=ROOT,
        env=world.env(**changes),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def until(check: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return out, err


async def test_the_ledger_writer_counts_what_it_commits_by_item(world: LedgerWorld) -> None:
    traffic = Traffic(world.store, seed=18)
    accounts = await traffic.make_accounts(world.pool, 5, 50_000_000)
    await traffic.run(accounts, 300)
    expected_debits: dict[str, int] = {}
    debit_micros: dict[str, int] = {}
    for e in traffic.expected.values():
        if e.item != "funds_added":
            expected_debits[e.item] = expected_debits.get(e.item, 0) + 1
            debit_micros[e.item] = debit_micros.get(e.item, 0) - e.amount_micros
    port = free_port()
    writer = start(world, "ledger-writer", "--metrics-port", str(port))
    try:
        rows = len(traffic.expected)
        got = await until(
            lambda: scrape(port).get(("metering_ledger_writer_rows_total", ())) == rows
        )
        assert got, scrape(port).get(("metering_ledger_writer_rows_total", ()))
        scraped = scrape(port)
        for item, count in expected_debits.items():
            assert scraped[("metering_debits_total", (("item", item),))] == count, item
            assert scraped[("metering_debit_micros_total", (("item", item),))] == debit_micros[item]
        credits = sum(1 for e in traffic.expected.values() if e.item == "funds_added")
        assert scraped[("metering_credits_total", (("item", "funds_added"),))] == credits
        assert scraped[("metering_ledger_writer_batch_rows_sum", ())] == rows
        live = httpx.get(f"http://127.0.0.1:{port}/livez").json()  # noqa: ASYNC210
        assert live["kind"] == "ledger-writer" and live["pid"] == writer.pid
        beats = await read_heartbeats(world.store.redis, world.settings)
        assert [b.kind for b in beats] == ["ledger-writer"] and beats[0].pid == writer.pid
    finally:
        out, err = stop(writer)
    assert writer.returncode == 0, err
    # A clean stop takes its heartbeat away.
    assert await read_heartbeats(world.store.redis, world.settings) == []


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "metering", "ledger-writer", "--metrics-port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and "metrics port" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_continuous_reconcile_finds_a_drift_within_a_pass(world: LedgerWorld) -> None:
    traffic = Traffic(world.store, seed=5)
    accounts = await traffic.make_accounts(world.pool, 12, 10_000_000)
    await traffic.run(accounts, 200)
    drained = world.cli("ledger-writer", "--drain")
    assert drained.returncode == 0, drained.stderr
    port = free_port()
    checker = start(
        world,
        "reconcile",
        "--continuous",
        "--metrics-port",
        str(port),
        reconcile_batch_accounts_max=3,
        reconcile_batch_interval_s=0.05,
    )
    try:
        clean = await until(
            lambda: scrape(port).get(("metering_reconcile_passes_total", ()), 0) >= 1
        )
        assert clean, stop(checker)
        scraped = scrape(port)
        assert scraped[("metering_reconcile_differences", ())] == 0
        assert scraped[("metering_reconcile_accounts_checked_total", ())] >= 12
        # Several batches: 12 accounts over 16 shards, about 3 a batch.
        # A tampered ledger row: the next complete pass reports it.
        victim = accounts[3]
        await world.conn.execute(
            "UPDATE ledger_entries SET amount_micros = amount_micros + 1 "
            "WHERE account_id = $1 AND seq = 2",
            victim,
        )
        found = await until(lambda: scrape(port).get(("metering_reconcile_differences", ()), 0) > 0)
        assert found, "the drift was not found"
        scraped = scrape(port)
        assert scraped[("metering_reconcile_differences_total", (("kind", "balance_chain"),))] >= 1
        summary = json.loads(await world.store.redis.get(reconcile_summary_key()))
        assert summary["differences"] >= 1 and any(victim in line for line in summary["first"])
    finally:
        out, err = stop(checker)
    assert checker.returncode == 0, err
    assert f"DIFFERENCE account={victim}" in err  # logged as it was found
