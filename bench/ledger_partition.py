"""Should ledger_entries be partitioned by time? Measures both shapes on the
same rows: the writer's insert path (COPY to staging + INSERT ... ON CONFLICT DO
NOTHING, batches of 2,000) and the activity query (one account, one month,
newest first, a page of 100).

    .venv/bin/python bench/ledger_partition.py [--rows 1000000]

Runs in a throw-away schema of METERING_TEST_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid

import asyncpg

URL = os.environ.get(
    "METERING_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/metering_test"
)
MONTH_US = 30 * 86_400 * 10**6
START_US = 1_767_225_600 * 10**6  # 2026-01-01
MONTHS = 12
COLUMNS = (
    "account_id text, seq bigint, item text, amount_micros bigint, "
    "balance_after_micros bigint, request_id text, at_us bigint, detail text"
)

SHAPES = {
    "plain": [f"CREATE TABLE ledger ({COLUMNS}, PRIMARY KEY (account_id, seq))"],
    # A unique key on a partitioned table must hold the partition key.
    "by_month": [
        f"CREATE TABLE ledger ({COLUMNS}, PRIMARY KEY (account_id, seq, at_us)) "
        "PARTITION BY RANGE (at_us)"
    ]
    + [
        f"CREATE TABLE ledger_m{m} PARTITION OF ledger FOR VALUES FROM "
        f"({START_US + m * MONTH_US}) TO ({START_US + (m + 1) * MONTH_US})"
        for m in range(MONTHS)
    ],
}
QUERY = (
    "SELECT seq, at_us FROM ledger WHERE account_id = $1 AND at_us >= $2 AND at_us <= $3 "
    "AND seq < $4 ORDER BY seq DESC LIMIT 101"
)


def rows(count: int, accounts: int) -> list[tuple]:
    # Entries in time order, each account's seq increasing with time.
    seqs = [0] * accounts
    out = []
    for i in range(count):
        a = random.randrange(accounts)
        seqs[a] += 1
        at = START_US + (i * (MONTHS * MONTH_US - 1)) // count
        out.append((f"acct-{a}", seqs[a], "sms_outbound", -7500, 0, f"r{i}", at, ""))
    return out


async def measure(shape: str, data: list[tuple], accounts: int) -> None:
    schema = f"part_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    conn = await asyncpg.connect(URL + ("&" if "?" in URL else "?") + f"search_path={schema}")
    try:
        for sql in SHAPES[shape]:
            await conn.execute(sql)
        await conn.execute("CREATE INDEX ON ledger (account_id, at_us)")
        await conn.execute("CREATE TEMP TABLE staging (LIKE ledger) ON COMMIT DELETE ROWS")
        began = time.monotonic()
        for start in range(0, len(data), 2000):
            async with conn.transaction():
                await conn.copy_records_to_table("staging", records=data[start : start + 2000])
                await conn.execute(
                    "INSERT INTO ledger SELECT * FROM staging ON CONFLICT DO NOTHING"
                )
        insert_s = time.monotonic() - began
        await conn.execute("ANALYZE ledger")
        times = []
        for _ in range(300):
            a = random.randrange(accounts)
            m = random.randrange(MONTHS)
            t0 = time.perf_counter()
            await conn.fetch(
                QUERY,
                f"acct-{a}",
                START_US + m * MONTH_US,
                START_US + (m + 1) * MONTH_US - 1,
                2**62,
            )
            times.append((time.perf_counter() - t0) * 1000)
        size = await conn.fetchval(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relkind IN ('r', 'p')",
            schema,
        )
        times.sort()
        print(
            f"{shape:9s}: insert {len(data) / insert_s:,.0f} rows/s; activity page p50 "
            f"{statistics.median(times):.2f} ms, p95 {times[int(len(times) * 0.95)]:.2f} ms; "
            f"size {size}"
        )
    finally:
        await conn.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--shapes", default="plain,by_month", help="which, in this order")
    args = parser.parse_args()
    random.seed(7)
    data = rows(args.rows, args.accounts)
    for shape in args.shapes.split(","):
        await measure(shape, data, args.accounts)


if __name__ == "__main__":
    asyncio.run(main())
