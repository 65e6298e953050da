"""The clients an operator's command needs, opened for the command and closed
after it (the same constructors the gateway's lifespan uses)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from metering.ledger.database import create_pool
from metering.settings import Settings
from metering.store import Store, open_store


@contextlib.asynccontextmanager
async def live_store(settings: Settings) -> AsyncIterator[Store]:
    store = await open_store(settings)
    try:
        yield store
    finally:
        await store.redis.aclose()


@contextlib.asynccontextmanager
async def store_and_pool(settings: Settings) -> AsyncIterator[tuple[Store, Any]]:
    """Redis and a lazy Postgres pool (no connection until a command needs one)."""
    async with live_store(settings) as store:
        pool = await create_pool(settings)
        try:
            yield store, pool
        finally:
            await pool.close()
