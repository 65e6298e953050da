"""The scenarios. Each starts what it needs on the run's private redis-server,
measures, records figures (or why it was skipped), and stops what it started."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any

import asyncpg

from bench import tools
from bench.alternatives import PG_DROP, pg_seed
from bench.procs import (
    SWITCH_TOKEN,
    RedisServer,
    bench_settings,
    ensure_database,
    start_bare_app,
    start_gateway,
)
from metering.accounts import create_account
from metering.credits import add_funds
from metering.keys import AccountKeys
from metering.rate_card import RateCard
from metering.scripts import Scripts
from metering.settings import Settings
from metering.store import open_store

HOT = "bench-hot"
HOT_BALANCE_MICROS = 10**13  # buys 1.3 billion texts: never runs dry in a bench
SPREAD_BALANCE_MICROS = 10**10
SEED_BATCH = 500
RATE_CARD = RateCard(
    call_outbound_per_minute_micros=10_000, call_inbound_per_minute_micros=5_000,
    call_increment_seconds=6, call_minimum_seconds=6, sms_outbound_micros=7_500,
    sms_inbound_micros=1_000, ring_through_attempt_micros=2_000,
    number_purchase_micros=1_000_000, number_renewal_micros=1_000_000)
# No ledger writer drains the streams in most scenarios, so the backlog guard is
# raised out of the way (XLEN is O(1): the check costs the same); the private
# redis-server is flushed between scenarios.
LEDGER_BACKLOG_MAX = 10**9


@dataclasses.dataclass
class Run:
    seconds: int
    warmup_s: int
    connections: int
    spread_accounts: int
    database_url: str
    redis: RedisServer
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def settings(self, **changes: Any) -> Settings:
        return bench_settings(self.redis.url, self.database_url,
                              ledger_backlog_max=LEDGER_BACKLOG_MAX, **changes)

    def record(self, scenario: str, variant: str, figures: dict[str, Any], key: str = ""
               ) -> dict[str, Any]:
        """Keep one measured row; `key` names it for the ratios and targets."""
        row = {"key": key, "scenario": scenario, "variant": variant, "status": "ok", **figures}
        if figures.get("errors"):
            row["status"] = "errors"
        self.results.append(row)
        print(_line(row), flush=True)
        return row

    def skip(self, scenario: str, variant: str, reason: str, key: str = "") -> None:
        row = {"key": key, "scenario": scenario, "variant": variant, "status": "skipped",
               "reason": reason}
        self.results.append(row)
        print(_line(row), flush=True)

    def spread_ids(self) -> list[str]:
        return [f"bench-{n}" for n in range(self.spread_accounts)]

    def http(self, url: str, path: str, accounts: int, token: str = SWITCH_TOKEN
             ) -> dict[str, Any]:
        """Closed-loop wrk run after a short warm-up (connections, caches, JIT of the script)."""
        if self.warmup_s:
            tools.wrk(url, path, token, accounts, self.connections, self.warmup_s)
        return tools.wrk(url, path, token, accounts, self.connections, self.seconds)


def _line(row: dict[str, Any]) -> str:
    name = f"{row['scenario']}: {row['variant']}"
    if row["status"] == "skipped":
        return f"  {name:<58} skipped: {row['reason']}"
    return (f"  {name:<58} {row['throughput_rps']:>9.0f}/s  p50 {row['p50_ms']:.2f}  "
            f"p99 {row['p99_ms']:.2f}  p99.9 {row['p999_ms']:.2f} ms  errors {row['errors']}")


async def _seed(settings: Settings, account_ids: list[str], balance_micros: int) -> None:
    store = await open_store(settings)
    try:
        async def one(account_id: str) -> None:
            await create_account(store, account_id, RATE_CARD)
            await add_funds(store, account_id, "bench-seed", balance_micros, "ops_credit", "bench")

        for start in range(0, len(account_ids), SEED_BATCH):
            await asyncio.gather(*(one(a) for a in account_ids[start:start + SEED_BATCH]))
    finally:
        await store.redis.aclose()


def seed(run: Run, spread: bool) -> None:
    """A fresh private Redis holding the hot account (and the spread accounts)."""
    run.redis.flush()
    settings = run.settings()
    asyncio.run(_seed(settings, [HOT], HOT_BALANCE_MICROS))
    if spread:
        asyncio.run(_seed(settings, run.spread_ids(), SPREAD_BALANCE_MICROS))


def _hot_seq(run: Run) -> int:
    async def read() -> int:
        store = await open_store(run.settings())
        try:
            return int(await store.redis.hget(store.account_keys(HOT).account, "seq"))
        finally:
            await store.redis.aclose()
    return asyncio.run(read())


def ceiling(run: Run) -> None:
    """debit.lua by EVALSHA from Python and from redis-benchmark; the bare Starlette debit."""
    seed(run, spread=False)
    settings = run.settings()
    python = run.record("ceiling", "EVALSHA from the Python client, hot", tools.loadgen({
        "mode": "evalsha", "redis_url": settings.redis_url, "accounts": 1,
        "concurrency": run.connections, "seconds": run.seconds,
        "ledger_backlog_max": LEDGER_BACKLOG_MAX}, run.seconds), "python_evalsha")

    keys = AccountKeys(HOT, settings.shard_count)
    # redis-benchmark is bounded by count: aim at about `seconds` at 3x the Python rate.
    requests = max(5_000, int(python["throughput_rps"] * 3 * run.seconds))
    before = _hot_seq(run)
    figures = tools.redis_benchmark(run.redis.port, [
        "EVALSHA", Scripts().debit.sha, "4", keys.account,
        keys.request("message", "rb-__rand_int__"), keys.shard.ledger, keys.shard.recharge,
        HOT, "sms_outbound", "sms_outbound_micros", "rb-__rand_int__", "outbound",
        str(settings.idempotency_window_s), str(LEDGER_BACKLOG_MAX), settings.live_channel, "",
    ], run.connections, requests, run.seconds * 10)
    # A refusal is an answer to redis-benchmark, not an error: count what charged.
    # Random ids collide now and then (a replay, charging nothing); more is an error.
    charged = _hot_seq(run) - before
    figures["replayed"] = requests - charged
    figures["errors"] = 0 if charged >= 0.99 * requests else requests - charged
    run.record("ceiling", "EVALSHA from redis-benchmark, hot", figures, "redis_benchmark")

    app = start_bare_app(settings)
    try:
        run.record("ceiling", "bare Starlette route + one EVALSHA, hot",
                   run.http(app.url, "/debit", 1), "bare")
    finally:
        app.stop()


def authorize(run: Run) -> None:
    """POST /v1/messages through the gateway: hot and spread, 1 and 2 processes."""
    seed(run, spread=True)
    settings = run.settings()
    n = run.spread_accounts
    for workers in (1, 2):
        gateway = start_gateway(settings, workers)
        try:
            hot = run.record("authorize", f"hot account, {workers} process(es)",
                             run.http(gateway.url, "/v1/messages", 1), f"authorize_hot_{workers}")
            run.record("authorize", f"{n:,} accounts, {workers} process(es)",
                       run.http(gateway.url, "/v1/messages", n), f"authorize_spread_{workers}")
            if workers == 2:
                rate = max(10.0, hot["throughput_rps"] / 2)
                run.record("authorize", "hot account, 2 processes, open loop at half the peak",
                           tools.loadgen({
                               "mode": "debit-open", "host": "127.0.0.1", "port": gateway.port,
                               "path": "/v1/messages", "token": SWITCH_TOKEN, "accounts": 1,
                               "rate_rps": round(rate, 1), "seconds": run.seconds,
                               "connections": run.connections}, run.seconds),
                           "authorize_open_2")
                open_loop_floor(run, rate)
        finally:
            gateway.stop()
    command = ledger_writer_command()
    if command is None:
        run.skip("authorize", "hot account, 2 processes, ledger writer running",
                 "no `python -m metering ledger-writer` on this commit yet",
                 "authorize_ledger_2")


def open_loop_floor(run: Run, rate: float) -> None:
    """The bare debit at the same offered rate: what the machine and the client
    cost in the tail, so a miss can be put on the gateway or not."""
    app = start_bare_app(run.settings())
    try:
        run.record("authorize", "(floor) bare Starlette debit, open loop, same rate",
                   tools.loadgen({
                       "mode": "debit-open", "host": "127.0.0.1", "port": app.port,
                       "path": "/debit", "token": SWITCH_TOKEN, "accounts": 1,
                       "rate_rps": round(rate, 1), "seconds": run.seconds,
                       "connections": run.connections}, run.seconds), "bare_open")
    finally:
        app.stop()


def calls(run: Run) -> None:
    """Reserve, extend, commit cycles over HTTP, one gateway process, spread accounts."""
    seed(run, spread=True)
    gateway = start_gateway(run.settings(), 1)
    try:
        figures = tools.loadgen({
            "mode": "calls", "host": "127.0.0.1", "port": gateway.port, "token": SWITCH_TOKEN,
            "accounts": run.spread_accounts, "concurrency": run.connections,
            "seconds": run.seconds}, run.seconds)
        run.record("calls", f"reserve+extend+commit, {run.spread_accounts:,} accounts, "
                   "1 process", figures, "calls")
    finally:
        gateway.stop()


async def _pg(database_url: str, sql: str, *seed_args: Any) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        if seed_args:
            await pg_seed(conn, *seed_args)
            return 0
        if sql.startswith("SELECT"):
            return int(await conn.fetchval(sql))
        await conn.execute(sql)
        return 0
    finally:
        await conn.close()


def postgres_row_lock(run: Run) -> None:
    """One Postgres transaction per debit behind the same HTTP stack: hot and spread."""
    asyncio.run(ensure_database(run.database_url))
    asyncio.run(_pg(run.database_url, "", [HOT, *run.spread_ids()], HOT_BALANCE_MICROS,
                    RATE_CARD.sms_outbound_micros))
    run.redis.flush()
    app = start_bare_app(run.settings())
    try:
        for accounts, label in ((1, "hot account"), (run.spread_accounts,
                                                      f"{run.spread_accounts:,} accounts")):
            before = asyncio.run(_pg(run.database_url, "SELECT count(*) FROM bench_ledger"))
            figures = run.http(app.url, "/pg-debit", accounts)
            after = asyncio.run(_pg(run.database_url, "SELECT count(*) FROM bench_ledger"))
            figures["ledger_rows"] = after - before
            run.record("postgres-row-lock", f"{label}, 1 process", figures,
                       "pg_hot" if accounts == 1 else "pg_spread")
    finally:
        app.stop()
        asyncio.run(_pg(run.database_url, PG_DROP))


def redis_watch(run: Run) -> None:
    """WATCH/MULTI/EXEC instead of Lua, behind the same HTTP stack, hot account."""
    seed(run, spread=False)
    app = start_bare_app(run.settings())
    try:
        run.record("redis-watch", "hot account, 1 process", run.http(app.url, "/watch-debit", 1),
                   "watch_hot")
    finally:
        app.stop()


def ledger_writer_command() -> list[str] | None:
    """The ledger writer's command line, if this commit has one."""
    from metering.cli import COMMANDS
    return ["-m", "metering", "ledger-writer"] if "ledger-writer" in COMMANDS else None


def ledger(run: Run) -> None:
    if ledger_writer_command() is None:
        run.skip("ledger", "writer rows/s and entry lag p99 at the authorize peak",
                 "no `python -m metering ledger-writer` on this commit yet (ledger branch)",
                 "ledger")
        return
    run.skip("ledger", "writer rows/s and entry lag p99 at the authorize peak",
             "ledger writer present but not yet wired into the bench")


def push(run: Run) -> None:
    if importlib.util.find_spec("bench.push_latency") is None:
        run.skip("push", "debit answered -> websocket message, 1,000 sockets",
                 "no live push on this commit yet (live branch: bench/push_latency.py)", "push")
        return
    run.skip("push", "debit answered -> websocket message, 1,000 sockets",
             "bench/push_latency.py present but not yet wired into the bench")


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "ceiling": ceiling,
    "authorize": authorize,
    "calls": calls,
    "postgres-row-lock": postgres_row_lock,
    "redis-watch": redis_watch,
    "ledger": ledger,
    "push": push,
}
