"""The designs a user might pick instead of one Lua script per debit, written
as such a user would write them, doing the same work as debit.lua: check the
balance, charge, append a ledger entry with a gapless seq, remember the request
id so a retry charges nothing.

- postgres-row-lock: one transaction per debit, `UPDATE ... WHERE balance >= cost`
  (the row lock serializes debits of one account) plus a ledger INSERT whose
  unique (account_id, request_id) makes retries safe.
- redis-watch: optimistic WATCH / MULTI / EXEC; a concurrent change of the
  account aborts the transaction and the client retries (bounded).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from redis.exceptions import WatchError

from metering.keys import AccountKeys

WATCH_RETRIES_MAX = 100
SMS_ITEM = "sms_outbound"
SMS_PRICE_FIELD = "sms_outbound_micros"

PG_SCHEMA = """
DROP TABLE IF EXISTS bench_ledger;
DROP TABLE IF EXISTS bench_accounts;
CREATE TABLE bench_accounts (
    account_id text PRIMARY KEY,
    balance_micros bigint NOT NULL CHECK (balance_micros >= 0),
    seq bigint NOT NULL DEFAULT 0,
    sms_outbound_micros bigint NOT NULL
);
CREATE TABLE bench_ledger (
    account_id text NOT NULL,
    seq bigint NOT NULL,
    item text NOT NULL,
    amount_micros bigint NOT NULL,
    balance_after_micros bigint NOT NULL,
    request_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, seq),
    UNIQUE (account_id, request_id)
);
"""
PG_DROP = "DROP TABLE IF EXISTS bench_ledger; DROP TABLE IF EXISTS bench_accounts;"

PG_CHARGE = """
UPDATE bench_accounts
   SET balance_micros = balance_micros - sms_outbound_micros, seq = seq + 1
 WHERE account_id = $1 AND balance_micros >= sms_outbound_micros
RETURNING balance_micros, seq, sms_outbound_micros
"""
PG_LEDGER = """
INSERT INTO bench_ledger (account_id, seq, item, amount_micros, balance_after_micros, request_id)
VALUES ($1, $2, $3, $4, $5, $6)
"""


class Refused(Exception):
    """Insufficient funds (or an unknown account) in an alternative design."""


class WatchLost(Exception):
    """Every retry of an optimistic transaction met a concurrent change."""


async def pg_seed(
    conn: asyncpg.Connection, account_ids: list[str], balance_micros: int, price_micros: int
) -> None:
    """Fresh bench tables holding the given accounts."""
    await conn.execute(PG_SCHEMA)
    await conn.copy_records_to_table(
        "bench_accounts",
        records=[(a, balance_micros, 0, price_micros) for a in account_ids],
        columns=["account_id", "balance_micros", "seq", "sms_outbound_micros"],
    )


async def pg_debit(pool: asyncpg.Pool, account_id: str, request_id: str) -> dict[str, Any]:
    """One transaction: charge under the row lock, then the ledger entry."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(PG_CHARGE, account_id)
        if row is None:
            raise Refused(account_id)
        balance, seq, cost = row
        await conn.execute(PG_LEDGER, account_id, seq, SMS_ITEM, -cost, balance, request_id)
    return {"charged_micros": cost, "balance_micros": balance, "seq": seq}


async def watch_debit(
    redis: Any,
    keys: AccountKeys,
    request_key: str,
    account_id: str,
    request_id: str,
    idempotency_window_s: int,
) -> dict[str, Any]:
    """WATCH the account, read, check, then MULTI the writes; retry on a conflict."""
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(WATCH_RETRIES_MAX):
            try:
                await pipe.watch(keys.account, request_key)
                prior = await pipe.get(request_key)
                if prior is not None:
                    await pipe.unwatch()
                    return {"replayed": prior}
                balance_s, reserved_s, seq_s, cost_s = await pipe.hmget(
                    keys.account, "balance", "reserved", "seq", SMS_PRICE_FIELD
                )
                if balance_s is None:
                    raise Refused(account_id)
                balance, reserved, seq, cost = (
                    int(balance_s),
                    int(reserved_s),
                    int(seq_s),
                    int(cost_s),
                )
                if balance - reserved < cost:
                    raise Refused(account_id)
                balance -= cost
                seq += 1
                pipe.multi()
                pipe.hset(keys.account, mapping={"balance": balance, "seq": seq})
                pipe.xadd(
                    keys.shard.ledger,
                    {
                        "account_id": account_id,
                        "seq": seq,
                        "item": SMS_ITEM,
                        "amount_micros": -cost,
                        "balance_after_micros": balance,
                        "request_id": request_id,
                    },
                )
                pipe.set(request_key, f"{cost},{balance},{seq}", ex=idempotency_window_s)
                await pipe.execute()
                return {"charged_micros": cost, "balance_micros": balance, "seq": seq}
            except WatchError:
                continue
    raise WatchLost(f"WATCH lost {WATCH_RETRIES_MAX} times in a row on {account_id}")
