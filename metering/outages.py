"""Riding out a restart of Redis or Postgres: what every worker loop (ledger
writer, sweeper, recharge worker) does when a server it needs stops answering.

A worker keeps one `Outage` per loop. When a step fails with one of the errors
a restarting server raises (`REDIS_DOWN`, or the Postgres ones the caller adds),
the worker calls `await outage.wait(exc, stop)`: the first failure logs a
warning naming the server, each retry pauses with a bounded doubling backoff
(0.1 s, 0.2 s, ... up to `outage_backoff_max_s`), and a stop request ends the
pause at once. The first step that succeeds afterwards calls `outage.ended()`,
which logs how long the server was away. Anything else is a bug, not an
outage, and is left to the caller.

Log lines (stable, so operators and tests can find them):

    <worker>: Redis unavailable (<error>); retrying with backoff up to <max> s
    <worker>: Redis still unavailable after <n> s (<error>); next try in <d> s
    <worker>: Redis back after <n> s; resuming
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering.store import drop_idle_connections

# What a stopped or restarting Redis raises (BusyLoadingError, a Redis still
# loading its append-only file, is a ConnectionError).
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
BACKOFF_FIRST_S = 0.1

T = TypeVar("T")


def server_of(exc: BaseException) -> str:
    """The server an error came from, in the words of the log."""
    module = type(exc).__module__
    if module.startswith("redis"):
        return "Redis"
    if module.startswith("asyncpg"):
        return "Postgres"
    return "a server"


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if stop is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class Outage:
    """One worker loop's view of a server that stopped answering."""

    def __init__(
        self, worker: str, log: logging.Logger, backoff_max_s: float, redis: Any = None
    ) -> None:
        """redis: the worker's client, whose idle connections are dropped when
        Redis fails (a restarted server left them all dead)."""
        self.worker = worker
        self.redis = redis
        self.log = log
        self.backoff_max_s = backoff_max_s
        self.delay_s = BACKOFF_FIRST_S
        self.began: float | None = None
        self.server = ""
        self.retries = 0

    @property
    def active(self) -> bool:
        return self.began is not None

    async def wait(self, exc: BaseException, stop: asyncio.Event) -> None:
        """Log the failure, then pause for the current backoff (doubling, bounded)."""
        now = time.monotonic()
        if self.began is None:
            self.began, self.server = now, server_of(exc)
            self.log.warning(
                "%s: %s unavailable (%s); retrying with backoff up to %.1f s",
                self.worker,
                self.server,
                _describe(exc),
                self.backoff_max_s,
            )
        else:
            self.log.warning(
                "%s: %s still unavailable after %.1f s (%s); next try in %.1f s",
                self.worker,
                self.server,
                now - self.began,
                _describe(exc),
                self.delay_s,
            )
        self.retries += 1
        if self.redis is not None and server_of(exc) == "Redis":
            await drop_idle_connections(self.redis)
        await pause(stop, self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.backoff_max_s)

    def ended(self) -> None:
        """A step succeeded: if an outage was running, say it ended."""
        if self.began is None:
            return
        self.log.warning(
            "%s: %s back after %.1f s; resuming",
            self.worker,
            self.server,
            time.monotonic() - self.began,
        )
        self.began, self.delay_s, self.retries = None, BACKOFF_FIRST_S, 0


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


async def until_it_answers(
    outage: Outage,
    stop: asyncio.Event,
    attempt: Callable[[], Awaitable[T]],
    down: tuple[type[BaseException], ...] = REDIS_DOWN,
) -> T | None:
    """Run `attempt` until it succeeds (backing off while a server is down), or
    until stop is set (then None). For a worker's start-up: connecting, loading
    scripts, creating consumer groups."""
    while not stop.is_set():
        try:
            result = await attempt()
        except down as exc:
            await outage.wait(exc, stop)
            continue
        outage.ended()
        return result
    return None
