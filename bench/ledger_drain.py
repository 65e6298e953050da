"""Ledger writer figures: rows per second of a drain, and end-to-end lag (debit
answered -> its row committed in Postgres) under a steady debit rate.

    .venv/bin/python bench/ledger_drain.py [--entries 100000] [--rate 2000] [--seconds 10]

Standalone (not part of `python -m bench`). It runs in a private world like the
tests: its own redis-server on a free port and a throw-away schema in
METERING_TEST_DATABASE_URL; the writer is the real `python -m metering
ledger-writer` subprocess with the default batch settings and 256 shards.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from metering import debits  # noqa: E402
from tests.fixtures_ledger import Traffic, kill, ledger_world  # noqa: E402


async def drain(entries: int, accounts: int) -> None:
    async with ledger_world(shard_count=256, ledger_batch_wait_ms=200) as world:
        traffic = Traffic(world.store, seed=1)
        ids = await traffic.make_accounts(world.pool, accounts, 10**12)
        began = time.monotonic()
        await traffic.run(ids, entries, concurrency=500)
        made_s = time.monotonic() - began
        total = len(traffic.expected)
        began = time.monotonic()
        done = world.cli("ledger-writer", "--drain", timeout_s=600)
        wall_s = time.monotonic() - began
        assert done.returncode == 0, done.stderr
        rows = await world.conn.fetchval("SELECT count(*) FROM ledger_entries")
        assert rows == total, (rows, total)
        print(f"drain: {total} entries made in {made_s:.1f}s ({total / made_s:.0f}/s via Lua)")
        print(f"drain: {done.stdout.strip()}")
        writer_s = float(done.stdout.rsplit(" in ", 1)[1].rstrip("s\n"))
        print(
            f"drain: {total / writer_s:.0f} rows/s in the writer; {total / wall_s:.0f} rows/s "
            f"including process start ({wall_s:.2f}s)"
        )


async def lag(rate: int, seconds: float, accounts: int, batch_wait_ms: int) -> None:
    async with ledger_world(shard_count=256, ledger_batch_wait_ms=batch_wait_ms) as world:
        traffic = Traffic(world.store, seed=2)
        ids = await traffic.make_accounts(world.pool, accounts, 10**12)
        writer = world.start_writer()
        lags_ms: list[float] = []
        latest: list[tuple[str, int, float]] = []
        stop = asyncio.Event()

        async def produce() -> None:
            n = 0
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                due = int((time.monotonic() - began) * rate)
                batch = []
                while n < due:
                    n += 1
                    batch.append(
                        debits.ring_through_attempt(world.store, ids[n % len(ids)], f"lag-{n}")
                    )
                for charge, account_id in zip(
                    await asyncio.gather(*batch),
                    [ids[(n - len(batch) + i + 1) % len(ids)] for i in range(len(batch))],
                    strict=True,
                ):
                    latest.append((account_id, charge.seq, time.monotonic()))
                await asyncio.sleep(0.005)
            stop.set()

        async def sample() -> None:
            await asyncio.sleep(1.0)  # writer start-up
            while not stop.is_set():
                if not latest:
                    await asyncio.sleep(0.01)
                    continue
                account_id, seq, answered = latest[-1]
                # Polling Postgres is the measurement itself: nothing signals a commit.
                while not await world.conn.fetchval(  # noqa: ASYNC110
                    "SELECT 1 FROM ledger_entries WHERE account_id = $1 AND seq = $2",
                    account_id,
                    seq,
                ):
                    await asyncio.sleep(0.002)
                lags_ms.append((time.monotonic() - answered) * 1000)
                await asyncio.sleep(0.05)

        try:
            await asyncio.gather(produce(), sample())
        finally:
            kill(writer)
        lags_ms.sort()
        print(
            f"lag: {rate} debits/s for {seconds:.0f}s over {accounts} accounts, "
            f"{len(lags_ms)} samples: p50 {statistics.median(lags_ms):.0f} ms, "
            f"p95 {lags_ms[int(len(lags_ms) * 0.95)]:.0f} ms, max {lags_ms[-1]:.0f} ms "
            f"(batch wait {batch_wait_ms} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=2_000, help="debits per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--batch-wait-ms",
        default="200,20",
        help="ledger_batch_wait_ms values to measure the lag with",
    )
    parser.add_argument("--no-drain", action="store_true")
    args = parser.parse_args()
    if not args.no_drain:
        asyncio.run(drain(args.entries, args.accounts))
    for wait_ms in args.batch_wait_ms.split(","):
        asyncio.run(lag(args.rate, args.seconds, args.accounts, int(wait_ms)))


if __name__ == "__main__":
    main()
