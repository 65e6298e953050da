"""Ordered plain-SQL migrations in metering/ledger/migrations/NNNN_name.sql, applied once
each, tracked in schema_migrations, under an advisory lock so two processes
starting together do not race. Safe to run twice."""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from typing import Any

import asyncpg

from metering.errors import DatabaseNotMigrated, Unavailable
from metering.settings import Settings

log = logging.getLogger(__name__)
# Any fixed number: serializes concurrent migrators.
MIGRATION_LOCK_KEY = 7_240_001


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) in order."""
    folder = resources.files("metering.ledger") / "migrations"
    files = sorted((e.name, e.read_text()) for e in folder.iterdir() if e.name.endswith(".sql"))
    return files


async def apply_migrations(conn: Any) -> list[str]:
    """Apply what is not yet applied; returns the names applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            log.info("applied migration %s", name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


MIGRATE_COMMAND = "python -m metering migrate"


async def missing_migrations(conn: Any) -> list[str]:
    """The migrations this version has that the database has not applied."""
    names = [name for name, _ in migration_files()]
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return names
    done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    return [name for name in names if name not in done]


def not_migrated(missing: list[str]) -> DatabaseNotMigrated:
    """The error for a database that lacks migrations, naming the command to run."""
    listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return DatabaseNotMigrated(
        f"the Postgres database lacks {len(missing)} migration(s) ({listed}); "
        f"run `{MIGRATE_COMMAND}` (add --create-database for a new one), then start again"
    )


async def require_migrated(conn: Any) -> None:
    """Raise DatabaseNotMigrated unless every migration is applied."""
    missing = await missing_migrations(conn)
    if missing:
        raise not_migrated(missing)


async def check_at_start(pool: Any, timeout_s: float) -> bool:
    """A process's start-up check: True when the database answers and carries
    every migration, False when it does not answer (the caller goes on without
    it); raises DatabaseNotMigrated when it lacks migrations."""
    from metering.ledger.database import acquire

    try:
        async with acquire(pool, timeout_s) as conn:
            missing = await missing_migrations(conn)
    except Unavailable as exc:
        log.warning("Postgres did not answer at start (%s); going on without it", exc)
        return False
    if missing:
        raise not_migrated(missing)
    return True


async def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if it does not exist (local set-ups, tests)."""
    base, _, name = database_url.rpartition("/")
    name = name.split("?")[0]
    conn = await asyncpg.connect(base + "/postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()


async def migrate(database_url: str, create_database: bool = False) -> list[str]:
    """Create the database if asked, then apply what is missing; returns the
    names applied now."""
    if create_database:
        await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--create-database",
        action="store_true",
        help="create the database first if it does not exist",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    applied = await migrate(settings.database_url, args.create_database)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0
