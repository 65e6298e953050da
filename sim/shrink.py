"""Shrinking: the shortest sequence of one account's operations that still fails
the same check, found by delta debugging (Zeller's ddmin) on the live system.

Each trial plays the candidate operations on a new account of the same world,
keeping the original pauses between them (capped), since many money bugs need
time (an idempotency window, an expiry). The account's own set-up (create,
token, funds, card, recharge settings) is always kept. Faults are not replayed:
a failure that needs one is reported with the account's whole sequence.

The budget bounds the whole search, the first replay included: a trial still
playing at the deadline stops there and counts as not failing (a replay of
hundreds of steps with their pauses can take longer than any budget).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable

from sim.auditor import Auditor
from sim.driver import Driver, Lane, SimFailure
from sim.model import Account
from sim.plan import Op

# A pause between two operations longer than this is shortened to it (seconds).
GAP_MAX_S = 6.0
SETUP_KINDS = ("create", "token")


@dataclasses.dataclass
class Step:
    at_s: float  # when it ran, seconds from the start of the run
    batch: int
    op: Op


class OutOfTime(Exception):
    """The shrink's budget ran out during a trial."""


async def play(
    d: Driver,
    auditor: Auditor,
    template: Lane,
    steps: list[Step],
    suffix: str,
    deadline: float = math.inf,
) -> SimFailure | None:
    """Play steps on a new account like template's; return the failure, if any.
    Raises OutOfTime when time.monotonic() passes `deadline` first."""
    account_id = f"{template.account_id}-{suffix}"
    lane = Lane(template.plan, account_id, Account(account_id))
    d.lanes.append(lane)
    try:
        previous = steps[0].at_s if steps else 0.0
        for step in steps:
            gap = min(max(step.at_s - previous, 0.0), GAP_MAX_S)
            previous = step.at_s
            if time.monotonic() + gap > deadline:
                raise OutOfTime
            if gap > 0.02:
                await asyncio.sleep(gap)
            if step.op.kind == "fault":
                continue
            await d.run_op(lane, step.op)
            await auditor.snapshot([lane])
        await asyncio.sleep(0.3)
        await auditor.deep_lanes([lane])
    except SimFailure as exc:
        return exc
    finally:
        d.lanes.remove(lane)
    return None


async def shrink(
    d: Driver,
    auditor: Auditor,
    template: Lane,
    steps: list[Step],
    check: str,
    budget_s: float,
    log: Callable[[str], None],
) -> list[Step] | None:
    """The shortest failing sub-sequence found within budget_s, or None if the
    failure does not come back without the rest of the run."""
    deadline = time.monotonic() + budget_s
    fixed = [s for s in steps if s.op.kind in SETUP_KINDS]
    free = [s for s in steps if s.op.kind not in SETUP_KINDS and s.op.kind != "fault"]
    trials = 0

    async def fails(candidate: list[Step]) -> bool:
        nonlocal trials
        trials += 1
        ordered = sorted(fixed + candidate, key=lambda s: s.at_s)
        try:
            failure = await play(d, auditor, template, ordered, f"t{trials}", deadline)
        except OutOfTime:
            return False
        return failure is not None and failure.check == check

    if not await fails(free):
        if time.monotonic() > deadline:
            log(f"[sim] shrink: out of time ({budget_s:.0f}s) replaying {len(free)} steps")
        else:
            log("[sim] shrink: the failure does not come back on a new account without the rest")
        return None
    best = await ddmin(free, fails, lambda: time.monotonic() > deadline)
    log(f"[sim] shrink: {len(free)} -> {len(best)} steps in {trials} trials")
    return sorted(fixed + best, key=lambda s: s.at_s)


async def ddmin(
    items: list[Step],
    fails: Callable[[list[Step]], Awaitable[bool]],
    out_of_time: Callable[[], bool],
) -> list[Step]:
    n = 2
    while len(items) >= 2 and not out_of_time():
        size = math.ceil(len(items) / n)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        reduced = False
        for i in range(len(chunks)):
            if out_of_time():
                break
            complement = [s for j, c in enumerate(chunks) if j != i for s in c]
            if complement and await fails(complement):
                items, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(items):
                break
            n = min(len(items), n * 2)
    return items
