"""`python -m metering rebuild`: restore a lost Redis from Postgres.

For every account in Postgres that Redis lacks: its hash (rate card, limits,
recharge settings), balance = the ledger's last balance_after_micros, seq = the
last seq, reserved = 0 (open calls died with Redis: their held money is simply
available again), and its shard membership; then every customer token not
revoked (and the key of every revoked one is deleted, in case this Redis came
back from a copy older than the revocation).
Accounts Redis still has keep their live state unless Redis is *behind* the
ledger (a Redis that came back from an append-only file missing its last
second): those are fast-forwarded to the ledger (metering/ledger/recovery.py),
so their next change continues the ledger's seq. Last, this Redis lifetime is
marked checked (the gateways' restart fence then lets money move in it). Run
the writer to drain first if the old Redis is still readable.

Money from Stripe charges stays credited once, forever: the record of each
charge's credit is put back from the ledger (whose entry carries the
PaymentIntent as its request id) for every account, restored or kept, so a
replayed pay-now request, webhook or recharge answers the credit instead of
making another; a charge Postgres records as credited whose credit the ledger
lacks (lost with Redis) is marked owed again, and the recharge worker's repair
credits it. An open recharge episode puts its pending mark back on a restored
account, so no second recharge starts beside it.

What a rebuild cannot bring back: entries Redis accepted but Postgres never got
(the AOF fsync window and the writer's lag), and the idempotency answers of
switch requests and ops credits (a retry of one from before the loss is charged
again).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import orjson

from metering.credits import CHARGE_SOURCES, charge_credit_answer, charge_source_of
from metering.keys import AccountKeys, token_key
from metering.ledger import customer_tokens
from metering.ledger.database import store_and_connection
from metering.ledger.recovery import (
    LAST_ENTRY_COLUMNS,
    LAST_ENTRY_JOIN,
    catch_up,
    mark_checked,
    redis_run_id,
)
from metering.ledger.registry import PERSISTED_FIELDS, hash_fields
from metering.settings import Settings
from metering.store import Store

# The accounts with their last ledger entry, walked by the primary key index.
LOAD_SQL = f"""
SELECT a.id, {", ".join("a." + n for n in PERSISTED_FIELDS)}, {LAST_ENTRY_COLUMNS}
FROM accounts a {LAST_ENTRY_JOIN}
ORDER BY a.id
"""
NUMBERS_SQL = """
SELECT account_id, number, status FROM numbers
WHERE account_id = ANY($1::text[]) AND status IN ('active', 'suspended')"""
# Credits of Stripe charges (request id = the PaymentIntent), by their source.
CHARGE_CREDITS_SQL = f"""
SELECT account_id, request_id, amount_micros, balance_after_micros, seq, detail
FROM ledger_entries
WHERE item = 'funds_added' AND ({" OR ".join(f"detail LIKE '{s}:%'" for s in CHARGE_SOURCES)})
"""
CHARGE_CREDIT_SQL = CHARGE_CREDITS_SQL + " AND account_id = $1 AND request_id = $2"
# A charge credited in Redis whose credit never reached the ledger is owed again.
CHARGES_OWED_SQL = """
UPDATE payments p SET credited = false, updated_at = now()
WHERE p.status = 'succeeded' AND p.credited AND NOT EXISTS (
    SELECT 1 FROM ledger_entries e
    WHERE e.account_id = p.account_id AND e.item = 'funds_added'
        AND e.request_id = p.payment_intent_id)
"""
# Settings that the payments issue keeps in its own tables (migration 0005), as
# the hash fields they become; read only when the table exists.
SIDE_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "alert_settings": (
        "SELECT account_id, low_balance_threshold_micros, email FROM alert_settings",
        {"low_balance_threshold_micros": "alert_low_balance_micros", "email": "alert_email"},
    ),
    "recharge_settings": (
        "SELECT account_id, enabled, amount_micros, threshold_micros, failure_email "
        "FROM recharge_settings",
        {
            "enabled": "recharge_enabled",
            "amount_micros": "recharge_amount_micros",
            "threshold_micros": "recharge_threshold_micros",
            "failure_email": "recharge_failure_email",
        },
    ),
    "cards_on_file": (
        "SELECT account_id, payment_method_id, brand, last4, exp_month, exp_year "
        "FROM cards_on_file",
        {
            "payment_method_id": "card_payment_method_id",
            "brand": "card_brand",
            "last4": "card_last4",
            "exp_month": "card_exp_month",
            "exp_year": "card_exp_year",
        },
    ),
    "recharge_episodes": (
        "SELECT account_id, episode_us FROM recharge_episodes WHERE status = 'open'",
        {"episode_us": "recharge_pending_since_us"},
    ),
}
# Commands per pipelined round trip.
PIPELINE_COMMANDS_MAX = 1_000


@dataclasses.dataclass(slots=True)
class RebuildReport:
    accounts_restored: int = 0
    accounts_kept: int = 0
    tokens_restored: int = 0
    revoked_tokens_removed: int = 0
    charge_credits_restored: int = 0
    charges_owed: int = 0
    numbers_restored: int = 0
    accounts_fast_forwarded: int = 0
    calls_settled: int = 0


async def _side_fields(conn: Any) -> dict[str, dict[str, str]]:
    """account id -> hash fields from the side tables that exist."""
    out: dict[str, dict[str, str]] = {}
    for table, (sql, names) in SIDE_TABLES.items():
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            continue
        for row in await conn.fetch(sql):
            fields = out.setdefault(row["account_id"], {})
            for column, field in names.items():
                value = row[column]
                if isinstance(value, bool):
                    fields[field] = "1" if value else "0"
                elif value is not None:
                    fields[field] = str(value)
    return out


async def rebuild(store: Store, conn: Any) -> RebuildReport:
    """Restore what Redis lacks from Postgres (see the module docstring)."""
    report = RebuildReport()
    restored: list[str] = []
    rows = await conn.fetch(LOAD_SQL)
    side = await _side_fields(conn)
    redis = store.redis
    for start in range(0, len(rows), PIPELINE_COMMANDS_MAX):
        chunk = rows[start : start + PIPELINE_COMMANDS_MAX]
        keys = [AccountKeys(r["id"], store.settings.shard_count) for r in chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.exists(k.account)
            present = await pipe.execute()
            for row, k, exists in zip(chunk, keys, present, strict=True):
                if exists:
                    report.accounts_kept += 1
                    continue
                mapping = hash_fields(row)
                mapping.update(side.get(row["id"], {}))
                mapping.update(
                    balance=str(row["balance_micros"]), reserved="0", seq=str(row["last_seq"])
                )
                pipe.hset(k.account, mapping=mapping)
                pipe.sadd(k.shard.accounts, row["id"])
                report.accounts_restored += 1
                restored.append(row["id"])
            await pipe.execute()
    report.numbers_restored = await _restore_numbers(store, conn, restored)
    run_id = "" if store.settings.redis_cluster else await redis_run_id(store.redis)
    caught_up = await catch_up(store, conn)
    report.accounts_fast_forwarded = caught_up.accounts_fast_forwarded
    report.calls_settled = caught_up.calls_settled
    await _restore_tokens(store, conn, report)
    await _restore_charge_credits(store, conn, report)
    if run_id:
        await mark_checked(store.redis, run_id)
    return report


async def _restore_tokens(store: Store, conn: Any, report: RebuildReport) -> None:
    """Every customer token not revoked; and the key of every revoked one goes,
    in case this Redis came back from a copy older than the revocation."""
    tokens = await conn.fetch(customer_tokens.LIVE_TOKENS_SQL)
    for start in range(0, len(tokens), PIPELINE_COMMANDS_MAX):
        async with store.redis.pipeline(transaction=False) as pipe:
            for t in tokens[start : start + PIPELINE_COMMANDS_MAX]:
                pipe.set(token_key(t["sha256"]), t["account_id"], nx=True)
            answers = await pipe.execute()
        report.tokens_restored += sum(1 for a in answers if a)
    revoked = await conn.fetch(customer_tokens.REVOKED_TOKENS_SQL)
    for start in range(0, len(revoked), PIPELINE_COMMANDS_MAX):
        async with store.redis.pipeline(transaction=False) as pipe:
            for t in revoked[start : start + PIPELINE_COMMANDS_MAX]:
                pipe.delete(token_key(t["sha256"]))
            answers = await pipe.execute()
        report.revoked_tokens_removed += sum(answers)


async def _restore_charge_credits(store: Store, conn: Any, report: RebuildReport) -> None:
    """Put back the record of every Stripe charge's credit the ledger holds, and
    mark owed the charges whose credit it lacks (see the module docstring)."""
    if await conn.fetchval("SELECT to_regclass('payments')") is None:
        return
    rows = await conn.fetch(CHARGE_CREDITS_SQL)
    for start in range(0, len(rows), PIPELINE_COMMANDS_MAX):
        async with store.redis.pipeline(transaction=False) as pipe:
            for r in rows[start : start + PIPELINE_COMMANDS_MAX]:
                source = charge_source_of(r["detail"])
                if source is None:
                    continue
                keys = AccountKeys(r["account_id"], store.settings.shard_count)
                # Calls open at the time died with Redis: the answer says reserved 0.
                answer = charge_credit_answer(
                    r["amount_micros"], source, r["balance_after_micros"], 0, r["seq"]
                )
                pipe.set(keys.charge_credit(r["request_id"]), answer, nx=True)
            answers = await pipe.execute()
        report.charge_credits_restored += sum(1 for a in answers if a)
    owed = await conn.execute(CHARGES_OWED_SQL)
    report.charges_owed = int(owed.split()[-1])


async def restore_charge_credit(
    store: Store, conn: Any, account_id: str, payment_intent_id: str
) -> bool:
    """Put back the record of one charge's credit if the ledger holds the credit
    and Redis lost the record (its host crashed after the writer committed the
    entry): the credit script then answers that credit instead of making a second
    one. Returns whether a record was put back."""
    row = await conn.fetchrow(CHARGE_CREDIT_SQL, account_id, payment_intent_id)
    if row is None:
        return False
    source = charge_source_of(row["detail"])
    if source is None:
        return False
    keys = AccountKeys(account_id, store.settings.shard_count)
    answer = charge_credit_answer(
        row["amount_micros"], source, row["balance_after_micros"], 0, row["seq"]
    )
    return bool(await store.redis.set(keys.charge_credit(payment_intent_id), answer, nx=True))


async def _restore_numbers(store: Store, conn: Any, account_ids: list[str]) -> int:
    """The numbers the restored accounts hold (active or suspended), so calls and
    texts naming them are checked as before the loss."""
    if not account_ids or await conn.fetchval("SELECT to_regclass('numbers')") is None:
        return 0
    rows = await conn.fetch(NUMBERS_SQL, account_ids)
    for start in range(0, len(rows), PIPELINE_COMMANDS_MAX):
        async with store.redis.pipeline(transaction=False) as pipe:
            for r in rows[start : start + PIPELINE_COMMANDS_MAX]:
                keys = AccountKeys(r["account_id"], store.settings.shard_count)
                pipe.hset(keys.numbers, r["number"], r["status"])
            await pipe.execute()
    return len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    async with store_and_connection(settings) as (store, conn):
        report = await rebuild(store, conn)
    if getattr(args, "json", False):
        print(orjson.dumps(dataclasses.asdict(report)).decode())
        return 0
    print(
        f"rebuild: {report.accounts_restored} accounts restored, "
        f"{report.accounts_kept} already in Redis (kept; "
        f"{report.accounts_fast_forwarded} of them fast-forwarded to the ledger, "
        f"{report.calls_settled} open calls settled as the ledger closed them), "
        f"{report.tokens_restored} customer tokens restored, "
        f"{report.revoked_tokens_removed} revoked customer tokens removed, "
        f"{report.numbers_restored} phone numbers restored, "
        f"{report.charge_credits_restored} charge credits restored, "
        f"{report.charges_owed} charges owed a credit (the recharge worker credits them)"
    )
    return 0
