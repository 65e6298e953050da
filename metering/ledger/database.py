"""The Postgres connection pool, built once per process from the settings.

min_size=0: the pool opens no connection at start, so a gateway starts (and its
authorize path, which never touches Postgres, answers) while Postgres is down.
Errors of an unreachable database become `Unavailable`, mapped to 503 once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from metering.errors import Unavailable
from metering.settings import Settings
from metering.store import Store, open_store

# What an unreachable, restarting or refusing Postgres raises.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.AdminShutdownError,
)


async def create_pool(settings: Settings) -> Any:
    """A lazy pool (no connection until first use), bounded in size and time."""
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=settings.database_pool_max,
        timeout=settings.database_timeout_s,
        command_timeout=settings.database_timeout_s,
        # Idle connections are closed so a Postgres restart leaves no dead ones.
        max_inactive_connection_lifetime=60.0,
    )


async def connect(settings: Settings) -> Any:
    """One dedicated connection (the ledger writer, reconcile, rebuild)."""
    return await asyncpg.connect(
        settings.database_url,
        timeout=settings.database_timeout_s,
        command_timeout=max(settings.database_timeout_s, 60.0),
    )


@contextlib.asynccontextmanager
async def acquire(pool: Any, timeout_s: float) -> AsyncIterator[Any]:
    """A pooled connection; an unreachable database raises `Unavailable`."""
    try:
        async with pool.acquire(timeout=timeout_s) as conn:
            yield conn
    except DATABASE_DOWN as exc:
        raise Unavailable(
            f"the ledger database did not answer ({type(exc).__name__}); retry"
        ) from exc


@contextlib.asynccontextmanager
async def store_and_connection(settings: Settings) -> AsyncIterator[tuple[Store, Any]]:
    """The live store and one Postgres connection, for the tools that compare or
    copy the two (reconcile, rebuild); both closed on the way out."""
    store = await open_store(settings)
    try:
        conn = await connect(settings)
        try:
            yield store, conn
        finally:
            await conn.close()
    finally:
        await store.redis.aclose()
