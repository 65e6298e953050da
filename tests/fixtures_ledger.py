"""Fixtures of the ledger tests: a private world per test, so the writer, a
flush and reconcile see only what the test made.

- Redis: a redis-server of our own on a free port (flushing it harms no one);
- Postgres: a schema of our own inside the test database (search_path in the
  URL), migrated, dropped at the end;
- helpers to run `python -m metering ...` as real subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from devkit.testing import ROOT, RedisServer, settings_env
from metering.keys import all_shards
from metering.ledger.database import create_pool
from metering.ledger.migrate import apply_migrations, ensure_database
from metering.settings import Settings
from metering.store import Store, open_store
from tests.conftest import TEST_DATABASE_URL, test_settings

SHARDS = 16


def _with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@dataclasses.dataclass
class LedgerWorld:
    settings: Settings
    store: Store
    pool: Any
    conn: Any  # a direct connection for assertions
    redis_server: RedisServer
    schema: str

    def env(self, **changes: Any) -> dict[str, str]:
        return settings_env(self.settings.replace(**changes) if changes else self.settings)

    def cli(
        self, *args: str, timeout_s: float = 120, **changes: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m metering <args>` to completion."""
        return subprocess.run(
            [sys.executable, "-m", "metering", "--log-level", "warning", *args],
            cwd=ROOT,
            env=self.env(**changes),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start_writer(self, *args: str, **changes: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "metering", "--log-level", "warning", "ledger-writer", *args],
            cwd=ROOT,
            env=self.env(**changes),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def stream_entries(self) -> dict[tuple[str, int], dict[str, str]]:
        out: dict[tuple[str, int], dict[str, str]] = {}
        for shard in all_shards(self.settings.shard_count):
            for _, fields in await self.store.redis.xrange(shard.ledger):
                out[(fields["account_id"], int(fields["seq"]))] = fields
        return out

    async def postgres_entries(self) -> dict[tuple[str, int], dict[str, Any]]:
        rows = await self.conn.fetch("SELECT * FROM ledger_entries")
        return {(r["account_id"], r["seq"]): dict(r) for r in rows}

    async def stream_lengths(self) -> int:
        total = 0
        for shard in all_shards(self.settings.shard_count):
            total += await self.store.redis.xlen(shard.ledger)
        return total


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A migrated schema of our own in the test database; yields its URL."""
    schema = f"ledger_{uuid.uuid4().hex[:10]}"
    await ensure_database(TEST_DATABASE_URL)
    admin = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        url = _with_search_path(TEST_DATABASE_URL, schema)
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@contextlib.asynccontextmanager
async def ledger_world(
    redis_args: tuple[str, ...] = (), **changes: Any
) -> AsyncIterator[LedgerWorld]:
    """redis_args go to the private redis-server (e.g. an append-only file);
    changes to the settings."""
    schema = f"ledger_{uuid.uuid4().hex[:10]}"
    await ensure_database(TEST_DATABASE_URL)
    admin = await asyncpg.connect(TEST_DATABASE_URL)
    redis_server = RedisServer(*redis_args)
    opened: list[Any] = []
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        defaults: dict[str, Any] = dict(
            shard_count=SHARDS,
            ledger_batch_wait_ms=50,
            ledger_claim_interval_ms=200,
            ledger_claim_idle_ms=1_000,
            reservation_sweep_interval_s=0.0,
        )
        settings = test_settings(
            redis_url=redis_server.url,
            database_url=_with_search_path(TEST_DATABASE_URL, schema),
            **{**defaults, **changes},
        )
        conn = await asyncpg.connect(settings.database_url)
        opened.append(conn.close)
        await apply_migrations(conn)
        store = await open_store(settings)
        opened.append(store.redis.aclose)
        pool = await create_pool(settings)
        opened.append(pool.close)
        yield LedgerWorld(settings, store, pool, conn, redis_server, schema)
    finally:
        for close in reversed(opened):
            await close()
        redis_server.stop()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no handler runs, nothing is flushed or acknowledged."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclasses.dataclass(frozen=True)
class Expected:
    item: str
    amount_micros: int
    balance_after_micros: int
    request_id: str


class Traffic:
    """Debits and credits through the metering functions (the same Lua scripts the
    gateway runs), remembering what each answer says the ledger must hold."""

    def __init__(self, store: Store, seed: int) -> None:
        import random

        self.store = store
        self.rng = random.Random(seed)
        self.expected: dict[tuple[str, int], Expected] = {}
        self.counter = 0

    async def make_accounts(self, pool: Any, count: int, balance_micros: int) -> list[str]:
        from devkit.testing import RATE_CARD
        from metering import credits
        from metering.ledger import registry
        from metering.rate_card import RateCard

        ids = [f"acct-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        for account_id in ids:
            await registry.create_account(self.store, pool, account_id, RateCard.parse(RATE_CARD))
            c = await credits.add_funds(
                self.store, account_id, "initial", balance_micros, "ops_credit", "test funds"
            )
            self.expected[(account_id, c.seq)] = Expected(
                "funds_added", balance_micros, c.balance_micros, "initial"
            )
        return ids

    async def one(self, account_id: str) -> None:
        from metering import credits, debits

        self.counter += 1
        rid = f"r{self.counter}"
        roll = self.rng.random()
        if roll < 0.2:
            amount = self.rng.randint(1, 50_000)
            c = await credits.add_funds(self.store, account_id, rid, amount, "ops_credit")
            self.expected[(account_id, c.seq)] = Expected(
                "funds_added", amount, c.balance_micros, rid
            )
            return
        if roll < 0.5:
            charge = await debits.message(
                self.store, account_id, rid, self.rng.choice(["outbound", "inbound"])
            )
        elif roll < 0.95:
            charge = await debits.ring_through_attempt(self.store, account_id, rid)
        else:
            charge = await debits.number_purchase(self.store, account_id, rid, "+15550001111")
        self.expected[(account_id, charge.seq)] = Expected(
            charge.item, -charge.charged_micros, charge.balance_micros, rid
        )

    async def run(self, account_ids: list[str], count: int, concurrency: int = 200) -> None:
        """count operations on random accounts, `concurrency` in flight at a time."""
        for start in range(0, count, concurrency):
            n = min(concurrency, count - start)
            await asyncio.gather(*(self.one(self.rng.choice(account_ids)) for _ in range(n)))


def assert_postgres_matches(
    expected: dict[tuple[str, int], Expected], rows: dict[tuple[str, int], dict[str, Any]]
) -> None:
    """Entry for entry: the same keys, nothing more, and the same values."""
    missing = sorted(set(expected) - set(rows))
    extra = sorted(set(rows) - set(expected))
    assert not missing, f"{len(missing)} entries never reached Postgres, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected rows in Postgres, e.g. {extra[:5]}"
    for key, want in expected.items():
        row = rows[key]
        got = Expected(
            row["item"], row["amount_micros"], row["balance_after_micros"], row["request_id"]
        )
        assert got == want, f"{key}: Postgres has {got}, Redis answered {want}"
