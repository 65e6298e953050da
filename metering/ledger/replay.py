"""A range of the durable ledger, in order, for `python -m metering ledger replay`:
one account's entries by seq, or every account's by time. Read through a
server-side cursor inside one read-only snapshot, so memory stays bounded and
rows committed meanwhile neither appear half-way nor shift the order.

Entries still in the Redis streams (the writer's lag) are not in Postgres yet
and so not replayed; `python -m metering lag` says how many there are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from metering.ledger.activity import AT_US_MAX, AT_US_MIN
from metering.ledger_entries import LedgerEntry

COLUMNS = "account_id, seq, item, amount_micros, balance_after_micros, request_id, at_us, detail"
ACCOUNT_SQL = f"""
SELECT {COLUMNS} FROM ledger_entries
WHERE account_id = $1 AND seq >= $2 AND seq <= $3 AND at_us >= $4 AND at_us <= $5
ORDER BY seq"""
ALL_SQL = f"""
SELECT {COLUMNS} FROM ledger_entries
WHERE at_us >= $1 AND at_us <= $2
ORDER BY at_us, account_id, seq"""
# Rows fetched per round trip of the cursor.
FETCH_ROWS = 1_000
SEQ_MAX = 2**62


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayRange:
    account_id: str | None = None  # None: every account, by time
    from_seq: int = 1
    to_seq: int = SEQ_MAX
    from_us: int = AT_US_MIN
    to_us: int = AT_US_MAX  # inclusive


async def replay(conn: Any, span: ReplayRange, rows_max: int) -> AsyncIterator[LedgerEntry]:
    """The entries of the range in order, at most rows_max of them."""
    args: list[Any]
    if span.account_id is None:
        sql, args = ALL_SQL, [span.from_us, span.to_us]
    else:
        sql = ACCOUNT_SQL
        args = [span.account_id, span.from_seq, span.to_seq, span.from_us, span.to_us]
    sent = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(sql, *args, prefetch=FETCH_ROWS):
            if sent == rows_max:
                return
            sent += 1
            yield LedgerEntry(**dict(row))
