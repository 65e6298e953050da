"""The live balance store: the Redis client, the loaded scripts and the settings
that every domain function takes as its first argument."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from metering.keys import AccountKeys
from metering.pipelining import ScriptPipeline
from metering.restart_fence import RestartFence
from metering.scripts import LuaScript, Scripts
from metering.settings import Settings


@dataclasses.dataclass(slots=True)
class Store:
    redis: Any  # redis.asyncio.Redis or RedisCluster
    scripts: Scripts
    settings: Settings

    def account_keys(self, account_id: str) -> AccountKeys:
        return AccountKeys(account_id, self.settings.shard_count)

    async def aclose(self) -> None:
        await self.redis.aclose()


# Concurrent script calls on a cluster without the pipeline, whose redis-py
# pipelines refuse EVALSHA.
CLUSTER_CONCURRENCY = 16


async def run_each(
    store: Store, script: LuaScript, calls: list[tuple[list[str], list[Any]]]
) -> list[Any]:
    """Run one script once per (keys, args), answers in order (the first error
    raised). Through the store's pipeline, all written at once (grouped by node
    on a cluster); without it, one redis-py pipeline on a single server, bounded
    concurrent calls on a cluster. A NOSCRIPT (a restarted Redis) sends that
    call through the script's reloading path."""
    if not calls:
        return []
    redis = store.redis
    if script.pipeline is not None and redis is script.pipeline.client:
        answers: list[Any] = []
        step = store.settings.redis_pipeline_batch_max  # one write per round
        for start in range(0, len(calls), step):
            answers += await script.run_many(redis, calls[start : start + step])
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers
    if store.settings.redis_cluster:
        limit = asyncio.Semaphore(CLUSTER_CONCURRENCY)

        async def one(keys: list[str], args: list[Any]) -> Any:
            async with limit:
                return await script.call_one(redis, keys, args)

        return list(await asyncio.gather(*(one(k, a) for k, a in calls)))
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answers = await pipe.execute(raise_on_error=False)
    answered = []
    for (keys, args), answer in zip(calls, answers, strict=True):
        if isinstance(answer, Exception):
            answer = await script.call_one(redis, keys, args)
        answered.append(answer)
    return answered


class _Closing:
    """Closes the script pipeline together with the redis-py client, so every
    `await store.redis.aclose()` closes both."""

    script_pipeline: ScriptPipeline | None = None

    def _close_pipeline(self) -> None:
        if self.script_pipeline is not None:
            self.script_pipeline.close()


class _Redis(_Closing, Redis):  # type: ignore[misc]  # redis-py's own mixins disagree
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._close_pipeline()
        await super().aclose(close_connection_pool)


class _RedisCluster(_Closing, RedisCluster):  # type: ignore[misc]
    async def aclose(self) -> None:
        self._close_pipeline()
        await super().aclose()


async def drop_idle_connections(redis: Any) -> None:
    """After Redis stopped answering: close the idle pooled connections, so that the
    next commands open fresh ones instead of each meeting a dead socket once."""
    if isinstance(redis, RedisCluster):
        for node in redis.get_nodes():
            await node.disconnect_free_connections()
    else:
        await redis.connection_pool.disconnect(inuse_connections=False)


def reconnect_once() -> Retry:
    """A command that meets a lost connection is sent once more on a fresh one:
    after a Redis restart every idle pooled socket is dead without knowing it,
    and its next command would fail (a 503 at the gateway). Never on a timeout.
    A repeat is harmless: commands that move money are scripts carrying their
    own id, which answer a repeat from it, events carry an event id the notifier
    records once, and the rest set values."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def connect_redis(settings: Settings, fence: RestartFence | None = None) -> Any:
    """One client for the process, bounded in connections and time. With a fence,
    every new connection passes it first (metering/restart_fence.py; a single
    server only)."""
    if settings.redis_cluster:
        return _RedisCluster.from_url(
            settings.redis_url,
            decode_responses=True,
            max_connections=settings.redis_connections_max,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            # The cluster client retries a lost node connection itself.
        )
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=settings.redis_connections_max,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=reconnect_once(),
        **({"redis_connect_func": fence.on_connect} if fence is not None else {}),
    )
    return _Redis(connection_pool=pool)


async def open_store(settings: Settings, fence: RestartFence | None = None) -> Store:
    """Connect and load the scripts; the caller closes `store.redis` (or the store).
    With `redis_pipeline` on (the default), script calls made with `store.redis`
    are pipelined automatically (metering/pipelining.py). A process that moves
    money passes its restart fence (ignored on a cluster)."""
    if settings.redis_cluster:
        fence = None
    redis = connect_redis(settings, fence)
    scripts = Scripts()
    scripts.use_timing(settings.request_metrics)
    try:
        await scripts.load(redis)
    except BaseException:
        await redis.aclose()
        raise
    if settings.redis_pipeline and ScriptPipeline.supports(settings.redis_url):
        redis.script_pipeline = ScriptPipeline(redis, settings, fence)
        scripts.use_pipeline(redis.script_pipeline)
    return Store(redis=redis, scripts=scripts, settings=settings)
