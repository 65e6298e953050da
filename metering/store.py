"""The live balance store: the Redis client, the loaded scripts and the settings
that every domain function takes as its first argument."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from metering.keys import AccountKeys
from metering.scripts import LuaScript, Scripts
from metering.settings import Settings


@dataclasses.dataclass(slots=True)
class Store:
    redis: Any  # redis.asyncio.Redis or RedisCluster
    scripts: Scripts
    settings: Settings

    def account_keys(self, account_id: str) -> AccountKeys:
        return AccountKeys(account_id, self.settings.shard_count)


# Concurrent script calls on a cluster, whose pipelines refuse EVALSHA.
CLUSTER_CONCURRENCY = 16


async def run_each(
    store: Store, script: LuaScript, calls: list[tuple[list[str], list[Any]]]
) -> list[Any]:
    """Run one script once per (keys, args), answers in order: one pipelined round
    trip on a single server, bounded concurrent calls on a cluster. A NOSCRIPT
    (a restarted Redis) sends that call through the script's reloading path."""
    if not calls:
        return []
    if store.settings.redis_cluster:
        limit = asyncio.Semaphore(CLUSTER_CONCURRENCY)

        async def one(keys: list[str], args: list[Any]) -> Any:
            async with limit:
                return await script(store.redis, keys, args)

        return list(await asyncio.gather(*(one(k, a) for k, a in calls)))
    async with store.redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answers = await pipe.execute(raise_on_error=False)
    out = []
    for (keys, args), answer in zip(calls, answers, strict=True):
        if isinstance(answer, Exception):
            answer = await script(store.redis, keys, args)
        out.append(answer)
    return out


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
    try:
        await scripts.load(redis)
    except BaseException:
        await redis.aclose()
        raise
    return Store(redis=redis, scripts=scripts, settings=settings)
