"""The process's Postgres pool (payments, recharge; the ledger may share it)."""

from __future__ import annotations

from typing import Any

import asyncpg

from metering.settings import Settings


async def open_database(settings: Settings) -> Any:
    """A pool bounded by database_pool_max that connects on first use, so a process
    starts (and serves what needs no Postgres) while Postgres is down."""
    return await asyncpg.create_pool(
        settings.database_url, min_size=0, max_size=settings.database_pool_max
    )
