"""The scenarios. Each starts what it needs on the run's private redis-server,
measures, records figures (or why it was skipped), and stops what it started."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from bench import observed_cost, tools
from bench.loadgen import percentiles_ms
from bench.postgres_row_lock import PG_DROP, pg_seed
from bench.procs import (
    OPS_TOKEN,
    SWITCH_TOKEN,
    Server,
    bench_settings,
    cpu_seconds,
    ensure_database,
    start_bare_app,
    start_gateway,
)
from devkit.testing import RATE_CARD as TEST_RATE_CARD
from devkit.testing import ROOT, RedisServer, settings_env, stop_process
from metering.accounts import create_account
from metering.credits import add_funds
from metering.debits import debit_call
from metering.keys import AccountKeys
from metering.rate_card import RateCard
from metering.scripts import Scripts
from metering.settings import Settings
from metering.store import Store, open_store

HOT = "bench-hot"
HOT_BALANCE_MICROS = 10**13  # buys 1.3 billion texts: never runs dry in a bench
SPREAD_BALANCE_MICROS = 10**10
SEED_BATCH = 500
RATE_CARD = RateCard.parse(TEST_RATE_CARD)
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
        settings = bench_settings(
            self.redis.url, self.database_url, ledger_backlog_max=LEDGER_BACKLOG_MAX
        )
        return settings.replace(**changes) if changes else settings

    def record(
        self, scenario: str, variant: str, figures: dict[str, Any], key: str = ""
    ) -> dict[str, Any]:
        """Keep one measured row; `key` names it for the ratios and targets."""
        row = {"key": key, "scenario": scenario, "variant": variant, "status": "ok", **figures}
        if figures.get("errors"):
            row["status"] = "errors"
        self.results.append(row)
        print(_line(row), flush=True)
        return row

    def skip(self, scenario: str, variant: str, reason: str, key: str = "") -> None:
        row = {
            "key": key,
            "scenario": scenario,
            "variant": variant,
            "status": "skipped",
            "reason": reason,
        }
        self.results.append(row)
        print(_line(row), flush=True)

    def spread_ids(self) -> list[str]:
        return [f"bench-{n}" for n in range(self.spread_accounts)]

    def http(self, server: Server, path: str, accounts: int, batch: int = 0) -> dict[str, Any]:
        """Closed-loop wrk run after a short warm-up (connections, caches, JIT of the
        script), with the CPU time the server and Redis spent per answered request
        (per debit, for batches): a figure the other tenants of the machine disturb
        less than throughput."""
        if self.warmup_s:
            tools.wrk(
                server.url, path, SWITCH_TOKEN, accounts, self.connections, self.warmup_s, batch
            )
        pids = server.pids()
        server_cpu_s, redis_cpu_s = cpu_seconds(pids), cpu_seconds([self.redis.proc.pid])
        figures = tools.wrk(
            server.url, path, SWITCH_TOKEN, accounts, self.connections, self.seconds, batch
        )
        answered = max(1, figures["requests"] - figures["errors"]) * max(1, batch)
        figures["server_cpu_us_per_req"] = round(
            (cpu_seconds(pids) - server_cpu_s) * 1e6 / answered, 1
        )
        figures["redis_cpu_us_per_req"] = round(
            (cpu_seconds([self.redis.proc.pid]) - redis_cpu_s) * 1e6 / answered, 1
        )
        return figures


def _line(row: dict[str, Any]) -> str:
    name = f"{row['scenario']}: {row['variant']}"
    if row["status"] == "skipped":
        return f"  {name:<58} skipped: {row['reason']}"
    return (
        f"  {name:<58} {row['throughput_rps']:>9.0f}/s  p50 {row['p50_ms']:.2f}  "
        f"p99 {row['p99_ms']:.2f}  p99.9 {row['p999_ms']:.2f} ms  errors {row['errors']}"
    )


async def _seed(settings: Settings, account_ids: list[str], balance_micros: int) -> None:
    store = await open_store(settings)
    try:

        async def one(account_id: str) -> None:
            await create_account(store, account_id, RATE_CARD)
            await add_funds(store, account_id, "bench-seed", balance_micros, "ops_credit", "bench")

        for start in range(0, len(account_ids), SEED_BATCH):
            await asyncio.gather(*(one(a) for a in account_ids[start : start + SEED_BATCH]))
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
    python = run.record(
        "ceiling",
        "EVALSHA from redis-py, one call at a time, hot",
        tools.loadgen(
            {
                "mode": "evalsha",
                "redis_url": settings.redis_url,
                "accounts": 1,
                "concurrency": run.connections,
                "seconds": run.seconds,
                "ledger_backlog_max": LEDGER_BACKLOG_MAX,
            },
            run.seconds,
        ),
        "python_evalsha",
    )
    run.record(
        "ceiling",
        "EVALSHA from the gateway's pipelined client, hot",
        tools.loadgen(
            {
                "mode": "evalsha",
                "pipeline": True,
                "redis_url": settings.redis_url,
                "accounts": 1,
                "concurrency": run.connections,
                "seconds": run.seconds,
                "ledger_backlog_max": LEDGER_BACKLOG_MAX,
            },
            run.seconds,
        ),
        "python_pipelined",
    )

    # The gateway's own keys and arguments of an outbound text; redis-benchmark
    # replaces __rand_int__ with a random number on every call.
    rb_keys, rb_args = debit_call(
        Store(None, Scripts(), settings),
        HOT,
        "sms_outbound",
        "message",
        "rb-__rand_int__",
        "outbound",
    )
    # redis-benchmark is bounded by count: aim at about `seconds` at 3x the Python rate.
    requests = max(5_000, int(python["throughput_rps"] * 3 * run.seconds))
    before = _hot_seq(run)
    figures = tools.redis_benchmark(
        run.redis.port,
        ["EVALSHA", Scripts().debit.sha, str(len(rb_keys)), *rb_keys, *map(str, rb_args)],
        run.connections,
        requests,
        run.seconds * 10,
    )
    # A refusal is an answer to redis-benchmark, not an error: count what charged.
    # Random ids collide now and then (a replay, charging nothing); more is an error.
    charged = _hot_seq(run) - before
    figures["replayed"] = requests - charged
    figures["errors"] = 0 if charged >= 0.99 * requests else requests - charged
    run.record("ceiling", "EVALSHA from redis-benchmark, hot", figures, "redis_benchmark")

    app = start_bare_app(settings)
    try:
        run.record(
            "ceiling", "bare Starlette route + one EVALSHA, hot", run.http(app, "/debit", 1), "bare"
        )
    finally:
        app.stop()


def authorize(run: Run) -> None:
    """POST /v1/messages through the gateway: hot and spread, 1 and 2 processes."""
    seed(run, spread=True)
    settings = run.settings()
    n = run.spread_accounts
    rate = 0.0
    for workers in (1, 2):
        processes = "1 process" if workers == 1 else f"{workers} processes"
        gateway = start_gateway(settings, workers)
        try:
            hot = run.record(
                "authorize",
                f"hot account, {processes}",
                run.http(gateway, "/v1/messages", 1),
                f"authorize_hot_{workers}",
            )
            run.record(
                "authorize",
                f"{n:,} accounts, {processes}",
                run.http(gateway, "/v1/messages", n),
                f"authorize_spread_{workers}",
            )
            if workers == 2:
                rate = max(10.0, hot["throughput_rps"] / 2)
                run.record(
                    "authorize",
                    "hot account, 2 processes, open loop at half the peak",
                    tools.loadgen(
                        {
                            "mode": "debit-open",
                            "host": "127.0.0.1",
                            "port": gateway.port,
                            "path": "/v1/messages",
                            "token": SWITCH_TOKEN,
                            "accounts": 1,
                            "rate_rps": round(rate, 1),
                            "seconds": run.seconds,
                            "connections": run.connections,
                        },
                        run.seconds,
                    ),
                    "authorize_open_2",
                )
        finally:
            gateway.stop()
    open_loop_floor(run, rate)
    with_ledger_writer(run)


# Runs per setting, in pairs of alternating order (off-on, on-off, ...): drift of
# the shared machine falls on both sides.
OBSERVABILITY_ROUNDS = 8


def observability(run: Run) -> None:
    """What metrics and request ids cost on the authorize path: the same gateway
    (1 process, hot account) with METERING_REQUEST_METRICS=0 and =1, in pairs of
    alternating order in one run; each side is the mean of its rounds."""
    if shutil.which("wrk") is None:
        for on in (False, True):
            run.skip("observability", _observed(on), "wrk is not installed", _observed_key(on))
        return
    seed(run, spread=False)
    measured: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    # A smoke run (no warm-up) only proves the scenario works: one pair.
    for r in range(OBSERVABILITY_ROUNDS if run.warmup_s else 1):
        # Each order in turn: whatever drifts during a pair falls on both settings.
        for on in (False, True) if r % 2 == 0 else (True, False):
            gateway = start_gateway(run.settings(request_metrics=on), 1)
            try:
                figures = run.http(gateway, "/v1/messages", 1)
            finally:
                gateway.stop()
            measured[on].append(figures)
            print(
                f"  round: {'on ' if on else 'off'} {figures['throughput_rps']:,.0f}/s, "
                f"server CPU {figures['server_cpu_us_per_req']} us/req",
                flush=True,
            )
    for on in (False, True):
        rounds = measured[on]
        figures = {
            key: round(sum(r[key] for r in rounds) / len(rounds), 2)
            for key in rounds[0]
            if isinstance(rounds[0][key], int | float)
        }
        figures["load"] = rounds[0].get("load", "")
        run.record("observability", _observed(on), figures, _observed_key(on))
    # The same comparison without HTTP or a load generator: this process's own CPU
    # per request through the whole ASGI stack (bench/observed_cost.py).
    smoke = not run.warmup_s
    cpu = asyncio.run(
        observed_cost.measure(
            run.settings(),
            HOT,
            rounds=2 if smoke else observed_cost.ROUNDS,
            n=observed_cost.CONCURRENCY * 20 if smoke else observed_cost.REQUESTS_PER_ROUND,
        )
    )
    for on in (False, True):
        median = statistics.median(cpu[on])
        run.record(
            "observability",
            f"in process, ASGI stack + EVALSHA, request metrics and ids {'on' if on else 'off'} "
            f"(median of {len(cpu[on])} rounds)",
            {
                "throughput_rps": round(1e6 / median, 1),
                "server_cpu_us_per_req": round(median, 2),
                "rounds_us": [round(x, 2) for x in cpu[on]],
                # No latency here: the figure is CPU per request (req/s = per CPU second).
                "p50_ms": 0.0,
                "p99_ms": 0.0,
                "p999_ms": 0.0,
                "errors": 0,
                "tool": "in process",
            },
            "observed_cpu_on" if on else "observed_cpu_off",
        )


def _observed(on: bool) -> str:
    state = "on" if on else "off"
    return (
        f"request metrics and ids {state}, hot account, 1 process (mean of {OBSERVABILITY_ROUNDS})"
    )


def _observed_key(on: bool) -> str:
    return "observed_on" if on else "observed_off"


BATCH_ITEMS = 100


def batches(run: Run) -> None:
    """POST /v1/debit-batches of BATCH_ITEMS texts each on the hot account, 1 and 2
    processes; throughput in debits per second, checked against the account's seq."""
    if shutil.which("wrk") is None:
        for workers in (1, 2):
            run.skip("batch", f"{workers} process(es)", "wrk is not installed", f"batch_{workers}")
        return
    seed(run, spread=False)
    settings = run.settings()
    for workers in (1, 2):
        processes = "1 process" if workers == 1 else f"{workers} processes"
        gateway = start_gateway(settings, workers)
        try:
            before = _hot_seq(run)
            figures = run.http(gateway, "/v1/debit-batches", 1, BATCH_ITEMS)
            # Every answered text charged once (warm-up and requests in flight
            # at the end charge too): fewer means items were refused.
            charged = _hot_seq(run) - before
            answered = (figures["requests"] - figures["errors"]) * BATCH_ITEMS
            figures["charged"] = charged
            if charged < answered:
                figures["errors"] += answered - charged
            run.record(
                "batch",
                f"{BATCH_ITEMS} texts per request, hot account, {processes}",
                figures,
                f"batch_{workers}",
            )
        finally:
            gateway.stop()


def open_loop_floor(run: Run, rate: float) -> None:
    """The bare debit, 2 processes, at the same offered rate: what the machine and
    the client cost in the tail, so a miss can be put on the gateway or not."""
    app = start_bare_app(run.settings(), 2)
    try:
        run.record(
            "authorize",
            "(floor) bare Starlette debit, 2 processes, open loop, same rate",
            tools.loadgen(
                {
                    "mode": "debit-open",
                    "host": "127.0.0.1",
                    "port": app.port,
                    "path": "/debit",
                    "token": SWITCH_TOKEN,
                    "accounts": 1,
                    "rate_rps": round(rate, 1),
                    "seconds": run.seconds,
                    "connections": run.connections,
                },
                run.seconds,
            ),
            "bare_open",
        )
    finally:
        app.stop()


def calls(run: Run) -> None:
    """Reserve, extend, commit cycles over HTTP, one gateway process, spread accounts."""
    seed(run, spread=True)
    gateway = start_gateway(run.settings(), 1)
    try:
        figures = tools.loadgen(
            {
                "mode": "calls",
                "host": "127.0.0.1",
                "port": gateway.port,
                "token": SWITCH_TOKEN,
                "accounts": run.spread_accounts,
                "concurrency": run.connections,
                "seconds": run.seconds,
            },
            run.seconds,
        )
        run.record(
            "calls",
            f"reserve+extend+commit, {run.spread_accounts:,} accounts, 1 process",
            figures,
            "calls",
        )
    finally:
        gateway.stop()


async def _pg_execute(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _pg_seed(database_url: str, account_ids: list[str]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await pg_seed(conn, account_ids, HOT_BALANCE_MICROS, RATE_CARD.sms_outbound_micros)
    finally:
        await conn.close()


LEDGER_COUNT = "SELECT count(*) FROM bench_ledger"


def postgres_row_lock(run: Run) -> None:
    """One Postgres transaction per debit behind the same HTTP stack: hot and spread,
    1 and 2 processes (a pool of METERING_DATABASE_POOL_MAX connections each)."""
    asyncio.run(ensure_database(run.database_url))
    asyncio.run(_pg_seed(run.database_url, [HOT, *run.spread_ids()]))
    run.redis.flush()
    spread = f"{run.spread_accounts:,} accounts"
    try:
        for workers in (1, 2):
            processes = "1 process" if workers == 1 else f"{workers} processes"
            app = start_bare_app(run.settings(), workers)
            try:
                for accounts, label in ((1, "hot account"), (run.spread_accounts, spread)):
                    before = asyncio.run(_pg_count(run.database_url, LEDGER_COUNT))
                    figures = run.http(app, "/pg-debit", accounts)
                    after = asyncio.run(_pg_count(run.database_url, LEDGER_COUNT))
                    # Rows include the warm-up and requests in flight when wrk stopped.
                    figures["ledger_rows"] = after - before
                    key = f"pg_{'hot' if accounts == 1 else 'spread'}_{workers}"
                    run.record("postgres-row-lock", f"{label}, {processes}", figures, key)
            finally:
                app.stop()
    finally:
        asyncio.run(_pg_execute(run.database_url, PG_DROP))


LEDGER_VARIANT = "{n:,} accounts, 2 processes, ledger writer running"
LEDGER_ROW = "writer rows/s; entry lag (oldest unwritten entry, sampled) at that load"
LAG_SAMPLE_INTERVAL_S = 0.1
DRAIN_TIMEOUT_S = 60.0


def ledger_database_url(run: Run) -> str:
    """The writer's database: the bench's own, recreated for each run."""
    return run.database_url + "_ledger"


async def _fresh_ledger_database(url: str) -> None:
    from metering.ledger.migrate import apply_migrations

    base, _, name = url.rpartition("/")
    if not (name.startswith("metering_") and name.endswith("_ledger")):
        raise RuntimeError(f"refusing to recreate {name!r}: not a bench ledger database")
    admin = await asyncpg.connect(base + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


class LagSampler:
    """Every LAG_SAMPLE_INTERVAL_S, the age of the oldest entry not yet in Postgres
    (metering.ledger.lag). That age bounds every waiting entry's age, so the
    percentiles of the samples are an upper bound of the entries' lag at commit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ages_ms: list[int] = []
        self.behind_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._sample()))

    async def _sample(self) -> None:
        from metering.ledger.lag import ledger_lag

        store = await open_store(self.settings)
        try:
            while not self._stop.is_set():
                lag = await ledger_lag(store)
                self.ages_ms.append(max(0, lag.oldest_age_ms))
                self.behind_max = max(self.behind_max, lag.entries_behind)
                await asyncio.sleep(LAG_SAMPLE_INTERVAL_S)
        finally:
            await store.redis.aclose()

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _ledger_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ledger_entries"))
    finally:
        await conn.close()


async def _entries_behind(settings: Settings) -> int:
    from metering.ledger.lag import ledger_lag

    store = await open_store(settings)
    try:
        return int((await ledger_lag(store)).entries_behind)
    finally:
        await store.redis.aclose()


def _wait_for_writer(settings: Settings, writer: subprocess.Popen[bytes]) -> None:
    """Until the writer has joined its consumer group on the shard streams, so its
    start-up is not counted as lag."""

    async def joined() -> bool:
        store = await open_store(settings)
        try:
            key = AccountKeys(HOT, settings.shard_count).shard.ledger
            try:
                groups = await store.redis.xinfo_groups(key)
            except Exception:  # the stream does not exist yet
                return False
            return any(g["name"] == settings.ledger_consumer_group for g in groups)
        finally:
            await store.redis.aclose()

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not asyncio.run(joined()):
        if writer.poll() is not None:
            raise RuntimeError(f"the ledger writer exited with {writer.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the ledger writer did not join its consumer group")
        time.sleep(LAG_SAMPLE_INTERVAL_S)


def with_ledger_writer(run: Run) -> None:
    """Authorize (spread accounts, 2 gateway processes) with `python -m metering
    ledger-writer` draining the shard streams into Postgres; records the authorize
    figures and the writer's rows/s and entry lag at that load."""
    variant = LEDGER_VARIANT.format(n=run.spread_accounts)
    url = ledger_database_url(run)
    asyncio.run(_fresh_ledger_database(url))
    seed(run, spread=True)
    settings = run.settings(database_url=url)
    writer = subprocess.Popen(
        [sys.executable, "-m", "metering", "--log-level", "warning", "ledger-writer"],
        cwd=ROOT,
        env=settings_env(settings),
    )
    try:
        _wait_for_writer(settings, writer)
        gateway = start_gateway(settings, 2)
        try:
            rows_before = asyncio.run(_ledger_rows(url))
            with LagSampler(settings) as sampler:
                figures = run.http(gateway, "/v1/messages", run.spread_accounts)
            rows_after = asyncio.run(_ledger_rows(url))
        finally:
            gateway.stop()
        run.record("authorize", variant, figures, "authorize_ledger_2")
        waited = time.monotonic()
        while (
            asyncio.run(_entries_behind(settings)) > 0
            and time.monotonic() - waited < DRAIN_TIMEOUT_S
        ):
            time.sleep(LAG_SAMPLE_INTERVAL_S)
        drain_s = time.monotonic() - waited
        # Rows committed by the end of the drain, over the load and the drain: a
        # writer whose first commit lands just after the load still counts (a
        # smoke run's window is shorter than one batch under a loaded machine).
        rows_drained = asyncio.run(_ledger_rows(url))
    finally:
        stop_process(writer)
    window_s = run.seconds + run.warmup_s
    lag = percentiles_ms([a / 1000 for a in sampler.ages_ms])
    run.record(
        "ledger",
        LEDGER_ROW,
        {
            "tool": "metering.ledger.lag",
            "mode": f"sampled every {LAG_SAMPLE_INTERVAL_S}s",
            "requests": rows_drained - rows_before,
            "rows_during_load": rows_after - rows_before,
            "errors": 0,
            "throughput_rps": round((rows_drained - rows_before) / (window_s + drain_s), 1),
            "authorize_rps": figures["throughput_rps"],
            **lag,
            "lag_p99_s": lag["p99_ms"] / 1000,
            "lag_samples": len(sampler.ages_ms),
            "entries_behind_max": sampler.behind_max,
            "drain_after_load_s": round(drain_s, 2),
            "writer_exit_code": writer.returncode,
        },
        "ledger",
    )


def ledger(run: Run) -> None:
    """The writer at the authorize peak (measured once, with the authorize variant)."""
    if any(r.get("key") == "ledger" for r in run.results):
        return
    with_ledger_writer(run)


PUSH_SOCKETS = 1_000
PUSH_RATE_RPS = 500


def push(run: Run) -> None:
    """Debit answered -> websocket frame received, 1,000 sockets on one gateway process."""
    sockets = min(PUSH_SOCKETS, run.spread_accounts)
    variant = f"debit answered -> websocket frame, {sockets:,} sockets, 1 process"
    if importlib.util.find_spec("gateway.live_api") is None:
        run.skip("push", variant, "no live websockets on this commit yet (live branch)", "push")
        return
    seed(run, spread=True)
    gateway = start_gateway(run.settings(), 1)
    try:
        run.record(
            "push",
            variant,
            tools.loadgen(
                {
                    "mode": "push",
                    "host": "127.0.0.1",
                    "port": gateway.port,
                    "token": OPS_TOKEN,
                    "switch_token": SWITCH_TOKEN,
                    "sockets": sockets,
                    "rate_rps": PUSH_RATE_RPS,
                    "seconds": run.seconds,
                    "connections": run.connections,
                },
                run.seconds + 60,
            ),
            "push",
        )
    finally:
        gateway.stop()


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "ceiling": ceiling,
    "authorize": authorize,
    "batch": batches,
    "calls": calls,
    "postgres-row-lock": postgres_row_lock,
    "ledger": ledger,
    "push": push,
    "observability": observability,
}
