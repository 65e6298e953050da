"""The live balance store: the Redis client, the loaded scripts and the settings
that every domain function takes as its first argument."""

from __future__ import annotations

import dataclasses
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from metering.keys import AccountKeys
from metering.scripts import Scripts
from metering.settings import Settings


@dataclasses.dataclass(slots=True)
class Store:
    redis: Any  # redis.asyncio.Redis or RedisCluster
    scripts: Scripts
    settings: Settings

    def account_keys(self, account_id: str) -> AccountKeys:
        return AccountKeys(account_id, self.settings.shard_count)


def connect_redis(settings: Settings) -> Any:
    """One client for the process, bounded in connections and time."""
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url,
            decode_responses=True,
            max_connections=settings.redis_connections_max,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=settings.redis_connections_max,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    return Redis(connection_pool=pool)


async def open_store(settings: Settings) -> Store:
    """Connect and load the scripts; the caller closes `store.redis`."""
    redis = connect_redis(settings)
    scripts = Scripts()
    await scripts.load(redis)
    return Store(redis=redis, scripts=scripts, settings=settings)
