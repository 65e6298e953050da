"""`python -m metering reconcile`: Redis (live truth) against Postgres (durable).

Per account: Redis balance and seq against the Postgres ledger's last seq, last
balance_after and sum; every Postgres row's balance_after against the previous
row's plus its amount (a tampered amount shows at its seq); gaps in the seqs
(a deleted row shows as missing at its seq). Entries still in the Redis stream
and not yet in Postgres are lag, not differences: they fill the gap between
Postgres's last seq and Redis's, and are checked the same way. Exit code 1 on
any difference.

Read order, so that traffic running meanwhile is never mistaken for a loss:
Redis accounts first, then the streams, then Postgres. An entry with a seq up to
Redis's is either still in the stream when read, or was trimmed after its
commit and is therefore in Postgres when Postgres is read.

The writer keeps committing meanwhile, so Postgres may be *ahead* of the Redis
reading of an account (seq s, balance b), and accounts may be created after it.
Such an account is read from Redis again after Postgres: only if Redis is still
behind Postgres (or still lacks the account) is it a difference; otherwise the
Postgres row at seq s must say balance_after b. An entry missing from both the
stream reading and the Postgres snapshot is looked up in Postgres once more
(an entry committed out of order since) before it is reported missing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from metering.accounts import account_ids_by_shard
from metering.keys import ShardKeys, all_shards
from metering.ledger.database import store_and_connection
from metering.ledger.lag import LedgerLag, ledger_lag
from metering.ledger_entries import LedgerEntry
from metering.outages import Outage, until_it_answers
from metering.polling import stop_on_signals
from metering.settings import Settings
from metering.store import Store, open_store

log = logging.getLogger(__name__)
# Stream entries per XRANGE round trip.
STREAM_PAGE = 10_000
# Missing seqs listed per gap (the count is always given).
SEQS_LISTED_MAX = 20
# Pause before looking again for an account Postgres has and Redis lacks (account
# creation writes Postgres first, Redis milliseconds later).
CREATION_RECHECK_S = 0.2

AGGREGATES_SQL = """
SELECT account_id, count(*) AS entries, sum(amount_micros) AS sum_micros, max(seq) AS last_seq,
       (array_agg(balance_after_micros ORDER BY seq DESC))[1] AS last_balance_micros
FROM ledger_entries {where} GROUP BY account_id
"""
# Rows that do not follow their predecessor: a gap before them, or a balance_after
# that is not the previous balance_after plus this amount (seq 1 starts from 0).
BREAKS_SQL = """
SELECT account_id, seq, prev_seq, amount_micros, balance_after_micros, prev_balance_micros
FROM (
    SELECT account_id, seq, amount_micros, balance_after_micros,
           lag(seq, 1, 0::bigint) OVER w AS prev_seq,
           lag(balance_after_micros, 1, 0::bigint) OVER w AS prev_balance_micros
    FROM ledger_entries {where}
    WINDOW w AS (PARTITION BY account_id ORDER BY seq)
) t
WHERE seq <> prev_seq + 1 OR balance_after_micros <> prev_balance_micros + amount_micros
ORDER BY account_id, seq
"""
# A batch of the continuous reconcile reads only its accounts ($1), by the primary key.
SCOPE_SQL = "WHERE account_id = ANY($1::text[])"
ACCOUNTS_SQL = "SELECT id FROM accounts {where}"
CONFLICTS_SQL = "SELECT account_id, seq FROM ledger_conflicts {where} ORDER BY 1, 2"
ROWS_SQL = """
SELECT account_id, seq, item, amount_micros, balance_after_micros, request_id, at_us, detail
FROM ledger_entries
WHERE (account_id, seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    account_id: str
    seq: int | None
    kind: str  # missing_entry, balance_chain, sum, balance, entry_differs, account, conflict
    message: str

    def line(self) -> str:
        where = f"account={self.account_id}" + (f" seq={self.seq}" if self.seq is not None else "")
        return f"DIFFERENCE {where} {self.kind}: {self.message}"


@dataclasses.dataclass(slots=True)
class ReconcileReport:
    accounts_checked: int = 0
    postgres_entries: int = 0
    entries_not_in_postgres: int = 0
    differences: list[Difference] = dataclasses.field(default_factory=list)
    lag: LedgerLag | None = None

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """Part of the accounts, for the continuous reconcile: some shards, and the
    accounts Postgres holds in them (Postgres does not know shards)."""

    shards: list[int]
    durable_ids: frozenset[str]


async def _shard_account_ids(store: Store, scope: Scope | None) -> AsyncIterator[list[str]]:
    if scope is None:
        async for ids in account_ids_by_shard(store):
            yield ids
        return
    for shard in scope.shards:
        ids = sorted(await store.redis.smembers(ShardKeys(shard).accounts))
        if ids:
            yield ids


async def _redis_accounts(store: Store, scope: Scope | None = None) -> dict[str, tuple[int, int]]:
    """account id -> (balance_micros, seq), shard by shard."""
    out: dict[str, tuple[int, int]] = {}
    async for ids in _shard_account_ids(store, scope):
        async with store.redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                pipe.hmget(store.account_keys(account_id).account, "balance", "seq")
            answers = await pipe.execute()
        for account_id, (balance, seq) in zip(ids, answers, strict=True):
            if balance is not None:
                out[account_id] = (int(balance), int(seq))
    return out


async def _stream_entries(
    store: Store, scope: Scope | None = None
) -> dict[tuple[str, int], LedgerEntry]:
    """Every entry still in the shard streams, by (account, seq)."""
    out: dict[tuple[str, int], LedgerEntry] = {}
    shards = (
        all_shards(store.settings.shard_count)
        if scope is None
        else [ShardKeys(s) for s in scope.shards]
    )
    for shard in shards:
        start = "-"
        while True:
            page = await store.redis.xrange(shard.ledger, start, "+", count=STREAM_PAGE)
            for _, fields in page:
                entry = LedgerEntry.from_stream(fields)
                out[(entry.account_id, entry.seq)] = entry
            if len(page) < STREAM_PAGE:
                break
            start = "(" + page[-1][0]
    return out


def _check_account(
    account_id: str,
    redis_state: tuple[int, int] | None,
    agg: Any,
    breaks: list[Any],
    stream: dict[tuple[str, int], LedgerEntry],
    report: ReconcileReport,
) -> list[int]:
    """Append the account's differences; return the seqs found neither in
    Postgres nor in the stream (reported by the caller once confirmed)."""
    diffs = report.differences
    last_seq = int(agg["last_seq"]) if agg else 0
    last_balance = int(agg["last_balance_micros"]) if agg else 0
    redis_seq = redis_state[1] if redis_state else last_seq
    missing: list[int] = []

    def need(seq: int) -> LedgerEntry | None:
        entry = stream.get((account_id, seq))
        if entry is None:
            missing.append(seq)
        return entry

    for b in breaks:
        seq, prev_seq = int(b["seq"]), int(b["prev_seq"])
        if seq != prev_seq + 1:
            # Seqs between are absent from Postgres: lag if the stream has them.
            balance = int(b["prev_balance_micros"])
            for s in range(prev_seq + 1, seq):
                entry = need(s)
                if entry is not None:
                    balance += entry.amount_micros
            if not any(prev_seq < s < seq for s in missing) and (
                int(b["balance_after_micros"]) != balance + int(b["amount_micros"])
            ):
                diffs.append(
                    Difference(
                        account_id,
                        seq,
                        "balance_chain",
                        f"balance_after {b['balance_after_micros']} != "
                        f"{balance} + amount {b['amount_micros']}",
                    )
                )
        else:
            diffs.append(
                Difference(
                    account_id,
                    seq,
                    "balance_chain",
                    f"balance_after {b['balance_after_micros']} != previous balance_after "
                    f"{b['prev_balance_micros']} + amount {b['amount_micros']}",
                )
            )
    if agg and not breaks and int(agg["sum_micros"]) != last_balance:
        diffs.append(
            Difference(
                account_id,
                None,
                "sum",
                f"sum of amounts {agg['sum_micros']} != last balance_after {last_balance}",
            )
        )
    if redis_state is None:
        return missing
    redis_balance = redis_state[0]
    if redis_seq < last_seq:
        # Checked by the caller against a fresh Redis reading (see the docstring).
        return missing
    balance = last_balance
    for s in range(last_seq + 1, redis_seq + 1):
        entry = need(s)
        if entry is None:
            continue
        report.entries_not_in_postgres += 1
        if entry.balance_after_micros != balance + entry.amount_micros:
            diffs.append(
                Difference(
                    account_id,
                    s,
                    "balance_chain",
                    f"stream entry balance_after {entry.balance_after_micros} "
                    f"!= {balance} + amount {entry.amount_micros}",
                )
            )
        balance = entry.balance_after_micros
    if not missing and balance != redis_balance:
        diffs.append(
            Difference(
                account_id,
                redis_seq,
                "balance",
                f"Redis balance {redis_balance} != ledger balance_after {balance}",
            )
        )
    return missing


def _report_missing(account_id: str, missing: list[int], report: ReconcileReport) -> None:
    for i, s in enumerate(missing):
        if i == SEQS_LISTED_MAX:
            report.differences.append(
                Difference(
                    account_id, None, "missing_entry", f"... {len(missing)} missing entries in all"
                )
            )
            return
        report.differences.append(
            Difference(account_id, s, "missing_entry", "in neither Postgres nor the Redis stream")
        )


async def _redis_again(store: Store, account_ids: list[str]) -> dict[str, tuple[int, int]]:
    """A fresh (balance, seq) of some accounts, read after Postgres."""
    if not account_ids:
        return {}
    async with store.redis.pipeline(transaction=False) as pipe:
        for account_id in account_ids:
            pipe.hmget(store.account_keys(account_id).account, "balance", "seq")
        answers = await pipe.execute()
    return {
        a: (int(balance), int(seq))
        for a, (balance, seq) in zip(account_ids, answers, strict=True)
        if balance is not None
    }


async def _behind_or_raced(
    store: Store,
    conn: Any,
    suspects: dict[str, tuple[int, int] | None],
    aggregates: dict[str, Any],
    report: ReconcileReport,
) -> None:
    """Accounts whose Redis reading is older than Postgres (or absent): a
    difference only if Redis is still behind (or still lacks the account) now."""
    fresh = await _redis_again(store, sorted(suspects))
    absent = sorted(set(suspects) - set(fresh))
    if absent:
        # An account being created right now is in Postgres a moment before Redis.
        await asyncio.sleep(CREATION_RECHECK_S)
        fresh.update(await _redis_again(store, absent))
    raced: list[tuple[str, int, int]] = []
    for account_id, reading in sorted(suspects.items()):
        agg = aggregates.get(account_id)
        last_seq = int(agg["last_seq"]) if agg else 0
        now = fresh.get(account_id)
        if now is None:
            report.differences.append(
                Difference(
                    account_id, None, "account", "in Postgres but not in Redis (run rebuild)"
                )
            )
        elif now[1] < last_seq:
            report.differences.append(
                Difference(
                    account_id,
                    now[1] + 1,
                    "balance",
                    f"Postgres has seqs up to {last_seq} but Redis is at seq "
                    f"{now[1]} (a Redis that lost data without rebuild?)",
                )
            )
        elif reading is not None:
            raced.append((account_id, reading[1], reading[0]))
    # Postgres moved on since Redis was read: its row at the seq Redis had then
    # must hold the balance Redis had then.
    with_rows = [(a, seq, b) for a, seq, b in raced if seq > 0]
    rows = {}
    if with_rows:
        fetched = await conn.fetch(
            ROWS_SQL, [a for a, _, _ in with_rows], [seq for _, seq, _ in with_rows]
        )
        rows = {(r["account_id"], r["seq"]): int(r["balance_after_micros"]) for r in fetched}
    for account_id, seq, balance in raced:
        ledger_balance = rows.get((account_id, seq), 0 if seq == 0 else None)
        if ledger_balance is not None and ledger_balance != balance:
            report.differences.append(
                Difference(
                    account_id,
                    seq,
                    "balance",
                    f"Redis balance {balance} != ledger balance_after {ledger_balance}",
                )
            )


async def _still_missing(conn: Any, missing: dict[str, list[int]], report: ReconcileReport) -> None:
    """Report the missing seqs that Postgres still lacks now."""
    pairs = [(a, s) for a, seqs in missing.items() for s in seqs]
    if not pairs:
        return
    found = {
        (r["account_id"], r["seq"])
        for r in await conn.fetch(ROWS_SQL, [a for a, _ in pairs], [s for _, s in pairs])
    }
    for account_id, seqs in sorted(missing.items()):
        left = [s for s in seqs if (account_id, s) not in found]
        if left:
            _report_missing(account_id, left, report)


async def reconcile(store: Store, conn: Any, scope: Scope | None = None) -> ReconcileReport:
    """Compare every account (or those of `scope`); see the module docstring for
    what is checked."""
    report = ReconcileReport()
    redis_accounts = await _redis_accounts(store, scope)
    stream = await _stream_entries(store, scope)
    where, args = "", []
    if scope is not None:
        where = SCOPE_SQL
        args = [sorted(set(redis_accounts) | scope.durable_ids)]
    # One snapshot of Postgres for all its reads, so commits meanwhile cannot make
    # the aggregates and the row checks disagree.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        aggregates = {
            r["account_id"]: r for r in await conn.fetch(AGGREGATES_SQL.format(where=where), *args)
        }
        breaks: dict[str, list[Any]] = {}
        for r in await conn.fetch(BREAKS_SQL.format(where=where), *args):
            breaks.setdefault(r["account_id"], []).append(r)
        durable_ids = {
            r["id"]
            for r in await conn.fetch(
                ACCOUNTS_SQL.format(where=where.replace("account_id", "id")), *args
            )
        }
        conflicts = await conn.fetch(CONFLICTS_SQL.format(where=where), *args)
    report.postgres_entries = sum(int(a["entries"]) for a in aggregates.values())
    suspects: dict[str, tuple[int, int] | None] = {}
    missing: dict[str, list[int]] = {}
    for account_id in sorted(set(redis_accounts) | durable_ids | set(aggregates)):
        report.accounts_checked += 1
        reading = redis_accounts.get(account_id)
        agg = aggregates.get(account_id)
        if account_id not in durable_ids:
            where = "Redis" if reading is not None else "the ledger"
            report.differences.append(
                Difference(account_id, None, "account", f"in {where} but not in the accounts table")
            )
        elif reading is None or (agg is not None and reading[1] < int(agg["last_seq"])):
            suspects[account_id] = reading
        lost = _check_account(account_id, reading, agg, breaks.get(account_id, []), stream, report)
        if lost:
            missing[account_id] = lost
    await _behind_or_raced(store, conn, suspects, aggregates, report)
    await _still_missing(conn, missing, report)
    # Entries both in the stream and in Postgres (committed, not yet trimmed):
    # they must be the same entry, field for field.
    overlap = [
        e
        for e in stream.values()
        if e.account_id in aggregates and e.seq <= int(aggregates[e.account_id]["last_seq"])
    ]
    if overlap:
        rows = await conn.fetch(ROWS_SQL, [e.account_id for e in overlap], [e.seq for e in overlap])
        stored = {(r["account_id"], r["seq"]): LedgerEntry(**dict(r)) for r in rows}
        for e in overlap:
            row = stored.get((e.account_id, e.seq))
            if row is not None and row != e:
                report.differences.append(
                    Difference(
                        e.account_id,
                        e.seq,
                        "entry_differs",
                        f"Postgres row {row} differs from the Redis stream entry {e}",
                    )
                )
    for r in conflicts:
        report.differences.append(
            Difference(
                r["account_id"],
                int(r["seq"]),
                "conflict",
                "a stream entry conflicted with a different Postgres row (see ledger_conflicts)",
            )
        )
    if scope is None:
        report.lag = await ledger_lag(store)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument(
        "--continuous",
        action="store_true",
        help="run until stopped, in small batches, exporting what it finds as metrics "
        "(metering/ledger/reconcile_continuous.py)",
    )


def report_dict(report: ReconcileReport) -> dict[str, Any]:
    lag = report.lag
    return {
        "ok": report.ok,
        "accounts_checked": report.accounts_checked,
        "postgres_entries": report.postgres_entries,
        "entries_not_in_postgres": report.entries_not_in_postgres,
        "differences": [dataclasses.asdict(d) for d in report.differences],
        "lag": lag.as_dict() if lag else None,
    }


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "continuous", False):
        return await run_continuous(settings)
    async with store_and_connection(settings) as (store, conn):
        report = await reconcile(store, conn)
    if getattr(args, "json", False):
        print(orjson.dumps(report_dict(report)).decode())
        return 0 if report.ok else 1
    for d in report.differences:
        print(d.line())
    lag = report.lag
    assert lag is not None
    print(
        f"reconcile: {report.accounts_checked} accounts, {report.postgres_entries} entries "
        f"in Postgres, {len(report.differences)} differences; lag: "
        f"{report.entries_not_in_postgres} entries not yet in Postgres, "
        f"{lag.entries_behind} behind the writers, oldest "
        f"{lag.oldest_age_ms if lag.oldest_age_ms >= 0 else '-'} ms"
    )
    return 0 if report.ok else 1


async def run_continuous(settings: Settings) -> int:
    """`reconcile --continuous` until SIGTERM or SIGINT."""
    from metering.ledger.reconcile_continuous import ContinuousReconcile

    stop = stop_on_signals()
    starting = Outage("continuous reconcile", log, settings.outage_backoff_max_s)
    store = await until_it_answers(starting, stop, lambda: open_store(settings))
    if store is None:
        return 0
    try:
        await ContinuousReconcile(store).run(stop)
    finally:
        await store.redis.aclose()
    return 0
