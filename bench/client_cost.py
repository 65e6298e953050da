"""`python -m bench.client_cost [--seconds N] [--rounds N]`: what one EVALSHA of
debit.lua costs the calling Python process, by client, 32 tasks, no HTTP.

- `redis-py`: redis-py's asyncio client, one call at a time (the bare route's);
- `redis-py pipeline per tick`: the calls of one loop tick sent as one redis-py
  pipeline (`pipeline(transaction=False)`, `execute(raise_on_error=False)`);
- `gateway pipeline`: metering/pipelining.py (its own RESP connection, hiredis).

Client CPU per call (user + system time of this process / calls) is the figure
that decided for the gateway's own connection; calls per second also depend on
Redis and on the machine's other tenants. Each client runs in turn, `rounds`
times, on a private redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from devkit.testing import RATE_CARD, RedisServer
from metering.accounts import create_account
from metering.credits import add_funds
from metering.debits import debit_call
from metering.rate_card import RateCard
from metering.settings import Settings
from metering.store import Store, open_store

TASKS = 32
HOT = "client-cost"
Call = Callable[[list[str], list[Any]], Awaitable[Any]]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_tick_pipeline(store: Store) -> Call:
    """redis-py, the calls of one tick in one pipeline (the alternative measured)."""
    loop = asyncio.get_running_loop()
    queued: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
    sha = store.scripts.debit.sha

    async def send(batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        pipe = store.redis.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        for (_, _, future), answer in zip(
            batch, await pipe.execute(raise_on_error=False), strict=True
        ):
            future.set_result(answer)

    def flush() -> None:
        batch = queued[:]
        queued.clear()
        loop.create_task(send(batch))

    async def call(keys: list[str], args: list[Any]) -> Any:
        future = loop.create_future()
        if not queued:
            loop.call_soon(flush)
        queued.append((keys, args, future))
        return await future

    return call


async def measure(url: str, client: str, seconds: float) -> tuple[float, float]:
    settings = Settings.from_env({}).replace(
        redis_url=url,
        redis_connections_max=TASKS,
        ledger_backlog_max=10**9,
        redis_pipeline=client == "gateway pipeline",
    )
    store = await open_store(settings)
    if client == "redis-py pipeline per tick":
        call = per_tick_pipeline(store)
    else:

        async def call(keys: list[str], args: list[Any]) -> Any:
            return await store.scripts.debit(store.redis, keys, args)

    nonce = uuid.uuid4().hex[:8]
    counter = iter(range(1 << 62))
    done = 0
    deadline = time.perf_counter() + seconds

    async def task() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            keys, args = debit_call(
                store, HOT, "sms_outbound", "message", f"{nonce}-{next(counter)}", "outbound"
            )
            answer = await call(keys, args)
            assert answer[0] == "ok", answer
            done += 1

    cpu0, t0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    cpu, elapsed = cpu_s() - cpu0, time.perf_counter() - t0
    await store.aclose()
    return done / elapsed, cpu * 1e6 / done


async def seed(url: str) -> None:
    store = await open_store(Settings.from_env({}).replace(redis_url=url))
    await create_account(store, HOT, RateCard.parse(RATE_CARD))
    await add_funds(store, HOT, "seed", 10**13, "ops_credit", "bench")
    await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    redis = RedisServer()
    try:
        uvloop.run(seed(redis.url))
        for _ in range(args.rounds):
            for client in ("redis-py", "redis-py pipeline per tick", "gateway pipeline"):
                rate, cpu_us = uvloop.run(measure(redis.url, client, args.seconds))
                print(f"{client:<28} {rate:>9,.0f} calls/s  {cpu_us:6.1f} µs client CPU/call")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
