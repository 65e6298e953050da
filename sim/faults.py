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
    "writer_kill_in_outage": ("writer", "writer_pg"),
    "redis_restart": ("redis", "writer", "worker"),
    "redis_loss": ("redis", "writer", "worker"),
    "gateway_kill": ("gateway",),
    "gateway_crash": ("gateway", "gateway_pg", "stripe"),
    "worker_kill": ("worker",),
    "stripe_lose": ("stripe",),
    "stripe_5xx": ("stripe",),
    "smtp_down": ("smtp",),
}
# A charge must reach Stripe within this long for the worker kill to aim at it.
WORKER_AIM_TIMEOUT_S = 6.0
# How long a process set to die at a crash point is given to reach it.
CRASH_POINT_WAIT_S = 8.0


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
    if fault.kind in ("worker_kill", "gateway_crash"):
        return f"{fault.kind}:{fault.params['point']}"
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


async def writer_kill_in_outage(d: Driver, hit: asyncio.Event, down_s: float) -> None:
    """Postgres cut for the writer while it holds a batch it read, then the writer
    SIGKILLed in its retries: what it read but never committed must come back."""
    proxy = d.world.proxies["writer_pg"]
    w = d.world.workers["writer"]
    await asyncio.to_thread(proxy.stop)
    hit.set()
    await asyncio.sleep(down_s)
    w.kill()
    await asyncio.to_thread(proxy.start)
    w.start()


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
    """Kill the recharge worker at `point`: waiting for Stripe's answer (the card
    charged, the answer held in our proxy), or at one of the product's crash points
    (metering/crash_points.py: charged, recorded, credited, request read), where the
    process kills itself with SIGKILL; then start it again."""
    if point != "waiting_for_stripe":
        await _die_at(d, d.world.workers["recharge"], point, hit)
        return
    world = d.world
    stripe_p = world.proxies["worker_stripe"]
    pg = world.proxies["worker_pg"]
    rd = world.proxies["worker_redis"]
    await asyncio.to_thread(stripe_p.hold, "down")
    try:
        sent = stripe_p.forwarded["up"]
        await poll_until(lambda: stripe_p.forwarded["up"] != sent, WORKER_AIM_TIMEOUT_S)
        await asyncio.sleep(0.3)  # Stripe has charged; its answer waits in the proxy
        world.workers["recharge"].kill()
        hit.set()
    finally:
        for proxy in (stripe_p, pg, rd):
            await asyncio.to_thread(proxy.release)
    world.workers["recharge"].start()


async def _die_at(d: Driver, worker: Any, point: str, hit: asyncio.Event) -> None:
    worker.stop()
    worker.start(crash_point=point)
    hit.set()
    died = await poll_until(lambda: worker.proc.poll() is not None, CRASH_POINT_WAIT_S, 0.05)
    if not died:
        worker.stop()
    worker.start()


async def gateway_crash(d: Driver, hit: asyncio.Event, gateway: int, point: str) -> None:
    """Run gateway `gateway` set to kill itself at a pay-now crash point (charged,
    recorded, credited); once it has died (or a while passed), start it normally."""
    world = d.world
    gw = world.gateways[gateway]
    if gw is not None:
        await asyncio.to_thread(gw.stop)
        world.gateways[gateway] = None
    await asyncio.to_thread(world.start_gateway, gateway, point)
    hit.set()
    gw = world.gateways[gateway]
    assert gw is not None
    died = await poll_until(lambda: gw.proc.poll() is not None, CRASH_POINT_WAIT_S, 0.05)
    if not died:
        await asyncio.to_thread(gw.stop)
    world.gateways[gateway] = None
    await asyncio.to_thread(world.start_gateway, gateway)


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
    "writer_kill_in_outage": writer_kill_in_outage,
    "pg_outage": pg_outage,
    "redis_restart": redis_restart,
    "gateway_kill": gateway_kill,
    "gateway_crash": gateway_crash,
    "worker_kill": worker_kill,
    "stripe_lose": stripe_lose,
    "stripe_5xx": stripe_5xx,
    "smtp_down": smtp_down,
    "redis_loss": redis_loss,
}
