"""Faults, each a real process action: SIGKILL, a cut or held TCP proxy, a
restarted redis-server (with its append-only file cut back for the fsync
window), a gateway killed under load, the recharge worker killed at a chosen
point between charging the card and crediting the balance, local Stripe losing
answers or failing, SMTP down.

A fault runs as a task: its disruptive action first (then `hit` is set), then,
after a while, the repair. While it runs, and for a few seconds after, the
driver accepts the answers it explains (see driver.Faults).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sim.driver import Driver
from sim.plan import Fault
from sim.world import poll_until

# Areas a fault touches (driver.Faults.recent checks them).
AREAS = {
    "writer_kill": ("writer",),
    "redis_restart": ("redis", "writer", "worker"),
    "redis_loss": ("redis", "writer", "worker"),
    "gateway_kill": ("gateway",),
    "worker_kill": ("worker",),
    "stripe_lose": ("stripe",),
    "stripe_5xx": ("stripe",),
    "smtp_down": ("smtp",),
}
# A charge must reach Stripe within this long for the worker kill to aim at it.
WORKER_AIM_TIMEOUT_S = 6.0


def areas_of(fault: Fault) -> tuple[str, ...]:
    if fault.kind == "pg_outage":
        target = fault.params["target"]
        extra = {"writer_pg": ("writer",), "worker_pg": ("worker",), "gateway_pg": ()}[target]
        return (target, *extra)
    return AREAS[fault.kind]


async def run_fault(d: Driver, fault: Fault, hit: asyncio.Event) -> None:
    areas = areas_of(fault)
    for a in areas:
        d.faults.begin(a)
    d.stats.faults[_label(fault)] += 1
    try:
        await FAULTS[fault.kind](d, hit, **fault.params)
    finally:
        hit.set()
        for a in areas:
            d.faults.end(a)


def _label(fault: Fault) -> str:
    if fault.kind == "pg_outage":
        return f"pg_outage:{fault.params['target']}"
    if fault.kind == "worker_kill":
        return f"worker_kill:{fault.params['point']}"
    if fault.kind == "redis_loss":
        return f"redis_loss:{fault.params['recovery']}"
    return fault.kind


async def writer_kill(d: Driver, hit: asyncio.Event, down_s: float) -> None:
    w = d.world.workers["writer"]
    w.kill()
    hit.set()
    await asyncio.sleep(down_s)
    w.start()


async def pg_outage(d: Driver, hit: asyncio.Event, target: str, down_s: float) -> None:
    proxy = d.world.proxies[target]
    await asyncio.to_thread(proxy.stop)
    hit.set()
    await asyncio.sleep(down_s)
    await asyncio.to_thread(proxy.start)


async def redis_restart(d: Driver, hit: asyncio.Event, down_s: float) -> None:
    """SIGKILL with appendfsync always: nothing answered may be lost."""
    await d.world.redis_crash(None, down_s)
    hit.set()


async def gateway_kill(d: Driver, hit: asyncio.Event, gateway: int, down_s: float) -> None:
    d.world.kill_gateway(gateway)
    hit.set()
    await asyncio.sleep(down_s)
    await asyncio.to_thread(d.world.start_gateway, gateway)


async def worker_kill(d: Driver, hit: asyncio.Event, point: str) -> None:
    """Kill the recharge worker at `point` of a recharge: waiting for Stripe's answer
    (the card charged), before it records the attempt, before it credits, or after
    the credit and before Postgres hears of it."""
    world = d.world
    stripe_p = world.proxies["worker_stripe"]
    pg = world.proxies["worker_pg"]
    rd = world.proxies["worker_redis"]
    await asyncio.to_thread(stripe_p.hold, "down")
    try:
        sent = stripe_p.forwarded["up"]
        await poll_until(lambda: stripe_p.forwarded["up"] != sent, WORKER_AIM_TIMEOUT_S)
        await asyncio.sleep(0.1)  # Stripe has charged; its answer waits in the proxy
        if point == "before_attempt_record":
            await asyncio.to_thread(pg.hold, "up")
        elif point == "before_credit":
            await asyncio.to_thread(rd.hold, "up")
        elif point == "after_credit":
            pg_sent = pg.forwarded["up"]
        if point != "waiting_for_stripe":
            await asyncio.to_thread(stripe_p.release, "down")
        if point == "after_credit":
            await poll_until(lambda: pg.forwarded["up"] != pg_sent, 2.0, 0.005)
            await asyncio.sleep(0.03)
            await asyncio.to_thread(pg.hold, "up")
        await asyncio.sleep(0.3)
        world.workers["recharge"].kill()
        hit.set()
    finally:
        for proxy in (stripe_p, pg, rd):
            await asyncio.to_thread(proxy.release)
    world.workers["recharge"].start()


async def stripe_lose(d: Driver, hit: asyncio.Event, count: int) -> None:
    stripe = d.world.stripe
    await asyncio.to_thread(stripe.lose_responses, count)
    hit.set()
    await asyncio.sleep(3.0)
    await asyncio.to_thread(stripe.lose_responses, 0)


async def stripe_5xx(d: Driver, hit: asyncio.Event, count: int) -> None:
    stripe = d.world.stripe
    await asyncio.to_thread(stripe.fail_requests, count, 503)
    hit.set()
    await asyncio.sleep(3.0)
    await asyncio.to_thread(stripe.fail_requests, 0, 503)


async def smtp_down(d: Driver, hit: asyncio.Event, down_s: float) -> None:
    smtp = d.world.smtp
    await asyncio.to_thread(smtp.stop)
    hit.set()
    await asyncio.sleep(down_s)
    await asyncio.to_thread(smtp.start)


async def redis_loss(d: Driver, hit: asyncio.Event, recovery: str) -> None:
    """Set by the runner (it needs the batch in between): see runner.run_redis_loss."""
    raise AssertionError("redis_loss runs through the runner")


FAULTS: dict[str, Any] = {
    "writer_kill": writer_kill,
    "pg_outage": pg_outage,
    "redis_restart": redis_restart,
    "gateway_kill": gateway_kill,
    "worker_kill": worker_kill,
    "stripe_lose": stripe_lose,
    "stripe_5xx": stripe_5xx,
    "smtp_down": smtp_down,
    "redis_loss": redis_loss,
}
