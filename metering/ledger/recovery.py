"""The ledger check: bring Redis back in line with the Postgres ledger after
Redis lost its last changes, without ever reusing a seq.

Redis runs with the append-only file at fsync every second. A crash of its
host can bring it back from a file that misses up to about a second of
changes, some of which the ledger writer had already committed to Postgres.
Such an account's Redis seq is behind the ledger's last seq; its next change
would reuse a seq Postgres holds (a ledger conflict), and its balance would be
off by the lost changes.

`catch_up` fast-forwards every account Redis has whose seq is behind the
ledger (lua/fast_forward.lua, one account at a time, atomically):

- balance and seq become the ledger's last balance_after_micros and seq;
- an open call whose closing Redis lost but the ledger holds (a commit, an
  expiry, a late commit or release: entries with the call's id after Redis's
  seq) is settled as the ledger says: its state, its stored answer (a retry
  replays it; the replayed reserved_micros is 0), an expiry's charge (a late
  commit can still correct it); nothing is charged again;
- every other open call is kept: a live call goes on, its reservation held;
  `reserved` becomes what the kept calls hold.

It runs in `python -m metering rebuild` and, through `check_redis`, whenever a
process that moves money meets a Redis lifetime (run id) the check has not run
against yet: at gateway start, and after a Redis restart under running
processes (metering/restart_fence.py).

What it cannot bring back (the README's "Crash windows and recovery"):
changes Redis lost that never reached Postgres; calls opened, extended or
released in the lost second (a lost reserve makes the switch's commit answer
404 unknown_call; a lost release leaves the call open until it expires, and a
release sent again within the late window refunds that expiry); the
idempotency answers of the lost second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from metering.errors import Unavailable
from metering.keys import LEDGER_CHECKED_KEY, AccountKeys
from metering.ledger.database import acquire, create_pool
from metering.outages import Outage, until_it_answers
from metering.restart_fence import RestartFence, run_id_of
from metering.settings import Settings
from metering.store import Store, open_store

log = logging.getLogger(__name__)

# Each account's last ledger entry (last_seq, balance_micros; 0 for none), walked
# by the primary key index: the columns and join of a query over `accounts a`.
LAST_ENTRY_COLUMNS = (
    "coalesce(l.seq, 0) AS last_seq, coalesce(l.balance_after_micros, 0) AS balance_micros"
)
LAST_ENTRY_JOIN = """
LEFT JOIN LATERAL (
    SELECT seq, balance_after_micros FROM ledger_entries e
    WHERE e.account_id = a.id ORDER BY seq DESC LIMIT 1
) l ON true
"""
LAST_ENTRIES_SQL = f"SELECT a.id, {LAST_ENTRY_COLUMNS} FROM accounts a {LAST_ENTRY_JOIN}"
# The entries of some calls after a seq: the closings Redis may have lost.
CALL_CLOSINGS_SQL = """
SELECT seq, request_id, amount_micros, balance_after_micros, at_us, detail
FROM ledger_entries
WHERE account_id = $1 AND seq > $2 AND request_id = ANY($3::text[]) AND item LIKE 'call\\_%'
ORDER BY seq
"""
# Accounts per pipelined round trip when reading Redis seqs.
PIPELINE_COMMANDS_MAX = 1_000
# Attempts at one account when its open calls change meanwhile.
FAST_FORWARD_ATTEMPTS_MAX = 5


@dataclasses.dataclass(slots=True)
class CatchUpReport:
    accounts_checked: int = 0
    accounts_fast_forwarded: int = 0
    calls_settled: int = 0
    calls_kept: int = 0
    seqs_recovered: int = 0  # ledger entries Redis had lost, over all accounts


@dataclasses.dataclass(frozen=True, slots=True)
class Settlement:
    """How the ledger says an open call ended."""

    state: str  # committed, expired, released
    charge_micros: int
    at_us: int
    answer: str


def _stored_answer(fingerprint: str, values: list[int]) -> str:
    """A call's stored answer as lua/_lib.lua's answer_text writes it."""
    return fingerprint + "\n" + ",".join(str(v) for v in values)


def _detail_fields(detail: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in detail.split() if "=" in part)


def settlement_of(entries: list[Any]) -> Settlement | None:
    """The end of one call from its ledger entries (in seq order), or None if
    they do not close it. Answers follow lua/commit.lua and lua/release.lua."""
    found: Settlement | None = None
    for e in entries:
        detail, amount = e["detail"], int(e["amount_micros"])
        fields = _detail_fields(detail)
        capped = 1 if " capped" in f" {detail}" else 0
        balance, seq, at = int(e["balance_after_micros"]), int(e["seq"]), int(e["at_us"])
        if detail.startswith("expired"):
            found = Settlement("expired", -amount, at, "")
        elif detail.startswith("late_commit"):
            charge = int(fields["charge"])
            values = [charge, int(fields["billed_s"]), balance, 0, seq, capped, amount]
            found = Settlement(
                "committed", charge, at, _stored_answer(fields["duration_s"], values)
            )
        elif detail.startswith("late_release"):
            found = Settlement("released", 0, at, _stored_answer("", [0, balance, 0, amount]))
        elif "duration_s" in fields:
            values = [-amount, int(fields["billed_s"]), balance, 0, seq, capped, 0]
            found = Settlement(
                "committed", -amount, at, _stored_answer(fields["duration_s"], values)
            )
    return found


async def fast_forward(
    store: Store, conn: Any, account_id: str, last_seq: int, balance_micros: int
) -> list[Any]:
    """Fast-forward one account (lua/fast_forward.lua); returns the script's answer."""
    keys = AccountKeys(account_id, store.settings.shard_count)
    s = store.settings
    answer: list[Any] = []
    for _ in range(FAST_FORWARD_ATTEMPTS_MAX):
        redis_seq = int(await store.redis.hget(keys.account, "seq") or 0)
        open_ids = sorted(await store.redis.smembers(keys.calls))
        entries: dict[str, list[Any]] = {}
        if open_ids:
            for row in await conn.fetch(CALL_CLOSINGS_SQL, account_id, redis_seq, open_ids):
                entries.setdefault(row["request_id"], []).append(row)
        args: list[Any] = [
            account_id,
            last_seq,
            balance_micros,
            s.idempotency_window_s,
            s.live_channel,
            len(open_ids),
        ]
        for call_id in open_ids:
            settled = settlement_of(entries.get(call_id, []))
            if settled is None:
                args += [call_id, "", 0, 0, ""]
            else:
                args += [
                    call_id,
                    settled.state,
                    settled.charge_micros,
                    settled.at_us,
                    settled.answer,
                ]
        answer = await store.scripts["fast_forward"](
            store.redis,
            [keys.account, keys.calls, keys.shard.expiry, *(keys.call(c) for c in open_ids)],
            args,
        )
        if answer[0] != "calls_changed":
            return answer
    return answer


async def catch_up(store: Store, conn: Any) -> CatchUpReport:
    """Fast-forward every account Redis has whose seq is behind the ledger."""
    report = CatchUpReport()
    rows = await conn.fetch(LAST_ENTRIES_SQL)
    for start in range(0, len(rows), PIPELINE_COMMANDS_MAX):
        chunk = rows[start : start + PIPELINE_COMMANDS_MAX]
        async with store.redis.pipeline(transaction=False) as pipe:
            for r in chunk:
                pipe.hget(AccountKeys(r["id"], store.settings.shard_count).account, "seq")
            seqs = await pipe.execute()
        for row, seq in zip(chunk, seqs, strict=True):
            if seq is None:
                continue  # not in Redis: rebuild restores it
            report.accounts_checked += 1
            if int(seq) >= int(row["last_seq"]):
                continue
            answer = await fast_forward(
                store, conn, row["id"], int(row["last_seq"]), int(row["balance_micros"])
            )
            if answer[0] != "fast_forwarded":
                continue
            report.accounts_fast_forwarded += 1
            report.seqs_recovered += int(row["last_seq"]) - int(answer[1])
            report.calls_kept += int(answer[3])
            report.calls_settled += int(answer[4])
            log.warning(
                "account %s: Redis was at seq %s, the ledger at %s: fast-forwarded to "
                "balance %s (%s open calls kept, %s settled as the ledger closed them)",
                row["id"],
                answer[1],
                row["last_seq"],
                row["balance_micros"],
                answer[3],
                answer[4],
            )
    return report


async def open_money_store(
    settings: Settings, worker: str, stop: asyncio.Event
) -> tuple[Store, Any] | None:
    """A worker's clients for moving money: a Postgres pool, and a store whose
    connections wait for the ledger check (metering/restart_fence.py). A Redis
    down at start is waited for; None when stop is set first. The caller closes
    both."""
    db = await create_pool(settings)
    fence = RestartFence(lambda: check_redis(settings, db), settings.redis_timeout_s)
    starting = Outage(worker, log, settings.outage_backoff_max_s)
    store = await until_it_answers(starting, stop, lambda: open_store(settings, fence))
    if store is None:
        await db.close()
        return None
    return store, db


async def redis_run_id(redis: Any) -> str:
    return run_id_of(await redis.info("server"))


async def mark_checked(redis: Any, run_id: str) -> None:
    """Record that the ledger check ran against this Redis lifetime."""
    await redis.set(LEDGER_CHECKED_KEY, run_id)


async def check_redis(settings: Settings, pool: Any) -> bool:
    """The ledger check of the Redis in `settings`, with a client of its own: run
    the catch-up unless this Redis lifetime was checked already, then mark it.
    False when Postgres did not answer (nothing was changed)."""
    store = await open_store(settings)
    try:
        # A cluster's nodes each have a run id: there the check runs every time.
        run_id = "" if settings.redis_cluster else await redis_run_id(store.redis)
        if run_id and await store.redis.get(LEDGER_CHECKED_KEY) == run_id:
            return True
        try:
            async with acquire(pool, settings.database_timeout_s) as conn:
                report = await catch_up(store, conn)
        except Unavailable:
            return False
        if run_id:
            await mark_checked(store.redis, run_id)
        log.log(
            logging.WARNING if report.accounts_fast_forwarded else logging.INFO,
            "ledger check of Redis (run id %s): %d accounts, %d fast-forwarded "
            "(%d lost entries taken from the ledger, %d open calls kept, %d settled)",
            run_id[:12],
            report.accounts_checked,
            report.accounts_fast_forwarded,
            report.seqs_recovered,
            report.calls_kept,
            report.calls_settled,
        )
        return True
    finally:
        await store.aclose()
