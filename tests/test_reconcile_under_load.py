"""reconcile while traffic runs and the ledger writer commits: a healthy system
exits 0 every time, and a real difference still exits 1."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from devkit.testing import ROOT
from metering.ledger import registry
from tests.fixtures_ledger import LedgerWorld, Traffic, kill, ledger_world

RUNS = 3


async def reconcile(world: LedgerWorld) -> tuple[int, str]:
    """`python -m metering reconcile` without blocking this loop (traffic goes on)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "metering",
        "--log-level",
        "warning",
        "reconcile",
        cwd=ROOT,
        env=world.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_reconcile_exits_0_under_load_and_1_only_on_a_real_difference() -> None:
    from devkit.testing import RATE_CARD
    from metering.rate_card import RateCard

    async with ledger_world(ledger_batch_wait_ms=5) as world:
        traffic = Traffic(world.store, seed=7)
        ids = await traffic.make_accounts(world.pool, 40, 1_000_000_000)
        writer = world.start_writer()
        stop = asyncio.Event()

        async def load() -> None:
            n = 0
            while not stop.is_set():
                await traffic.run(ids, 50, concurrency=25)
                await asyncio.sleep(0.02)  # steady load, not a flood the machine chokes on
                n += 1
                if n % 5 == 0:  # accounts are created meanwhile too
                    new = f"acct-new-{n}"
                    await registry.create_account(
                        world.store, world.pool, new, RateCard.parse(RATE_CARD)
                    )

        running = asyncio.create_task(load())
        try:
            await asyncio.sleep(0.5)
            for _ in range(RUNS):
                began = time.monotonic()
                code, out = await reconcile(world)
                print(f"reconcile under load: {time.monotonic() - began:.2f}s: {out.strip()}")
                assert code == 0, out
                assert "0 differences" in out, out
            # A real difference, made while the load goes on: a row changed by hand.
            victim = ids[0]
            seq = await world.conn.fetchval(
                "SELECT min(seq) + 1 FROM ledger_entries WHERE account_id = $1", victim
            )
            await world.conn.execute(
                "UPDATE ledger_entries SET amount_micros = amount_micros + 5 "
                "WHERE account_id = $1 AND seq = $2",
                victim,
                seq,
            )
            code, out = await reconcile(world)
            assert code == 1, out
            assert f"DIFFERENCE account={victim} seq={seq} balance_chain" in out, out
            assert out.count("DIFFERENCE") == 1, out
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await running
            kill(writer)
