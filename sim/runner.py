"""One simulation run: start the world, play the plan, audit, report."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from metering.sweeper import expire_due_reservations
from sim import faults as faults_mod
from sim.auditor import Auditor, after_redis_loss, drain_stream
from sim.driver import Driver, SimFailure, Stats, now_ms
from sim.hostile import Hostile
from sim.known import KNOWN_OPEN
from sim.plan import Batch, Fault, Op, Plan, Profile
from sim.shrink import Step, shrink
from sim.world import World, new_run_dir

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/metering_test"


@dataclasses.dataclass
class Result:
    seed: int
    profile: str
    ok: bool
    seconds: float
    stats: dict[str, Any]
    failure: SimFailure | None = None
    failing_ops: list[tuple[int, Op]] = dataclasses.field(default_factory=list)
    shrunk: list[tuple[int, Op]] | None = None
    run_dir: str = ""

    def report(self) -> str:
        lines = [
            f"simulation seed={self.seed} profile={self.profile}: "
            + ("PASSED" if self.ok else "FAILED")
            + f" in {self.seconds:.1f}s",
        ]
        s = self.stats
        lines.append(
            f"  steps {s['steps']} (requests {s['requests']}, batches {s['batches']}), "
            f"fuzz cases {s['fuzz_cases']}, hostile cases {s['hostile_cases']}, "
            f"5xx {s['5xx']}, changed accounts on 4xx {s['changed_accounts_on_4xx']}"
        )
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items())) or "none"
        lines.append(f"  faults injected ({sum(s['faults'].values())}): {faults}")
        lines.append(
            f"  answers whose outcome a fault hid: {s['unknown_outcomes']}; deep audits "
            f"{s['deep_audits']}; contention steps {s['contention_steps']}; duplicate steps "
            f"{s['duplicate_steps']}"
        )
        lines.append(f"  statuses: {s['statuses']}")
        for name, text in KNOWN_OPEN.items():
            found = s.get("known_open", {}).get(name)
            lines.append(
                f"  KNOWN OPEN {name}: {text}; "
                + (f"found: {found}" if found else "found nothing this run (remove it?)")
            )
        if self.failure is not None:
            lines.append("")
            lines.append(f"FAILURE {self.failure}")
            lines.append(f"  replay: python -m sim --seed {self.seed} --profile {self.profile}")
            if self.run_dir:
                lines.append(f"  process logs kept in {self.run_dir}")
            ops = self.shrunk if self.shrunk is not None else self.failing_ops
            if ops:
                head = (
                    "shortest failing sequence found"
                    if self.shrunk is not None
                    else ("the failing account's operations")
                )
                lines.append(f"  {head} ({len(ops)} steps):")
                for batch, op in ops[-60:]:
                    lines.append(f"    batch {batch:>4}: {op}")
        return "\n".join(lines)


class Runner:
    def __init__(
        self,
        seed: int,
        profile: Profile,
        database_url: str,
        log: Callable[[str], None] = print,
        waived: frozenset[str] = frozenset(),
        shrink_budget_s: float = 0.0,
    ) -> None:
        self.waived = waived
        self.seed = seed
        self.profile = profile
        self.database_url = database_url
        self.log = log
        self.tasks: list[asyncio.Task[None]] = []
        self.hand_written_done = False
        self.shrunk: list[Step] | None = None
        self.hostile: Hostile
        self.executed: dict[int, list[Step]] = {}
        self.began = time.monotonic()
        self.shrink_budget_s = shrink_budget_s

    async def run(self) -> Result:
        began = self.began = time.monotonic()
        run_dir = new_run_dir(self.seed)
        world = World(run_dir, self.database_url)
        plan = Plan(self.seed, self.profile)
        ns = f"s{self.seed}-{uuid.uuid4().hex[:4]}"
        failure: SimFailure | None = None
        driver: Driver | None = None
        try:
            await world.start()
            driver = Driver(world, plan, ns, self.log, self.waived)
            await driver.open()
            auditor = Auditor(driver)
            self.hostile = Hostile(driver)
            await self.hostile.setup()
            await self._loop(plan, driver, auditor, began)
            await self._settle_faults()
            await auditor.deep(final=True)
            await self.hostile.csv_check(driver.lanes)
        except SimFailure as exc:
            failure = exc
            if driver is not None and exc.account is not None and self.shrink_budget_s > 0:
                await self._shrink(driver, exc)
        except Exception as exc:  # the harness itself broke: report it as a failure
            failure = SimFailure("harness", f"{exc!r}\n{traceback.format_exc()}")
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if driver is not None:
                await driver.close()
            keep = failure is not None
            await world.close(keep_logs=keep)
        stats = (driver.stats if driver is not None else Stats()).summary()
        result = Result(
            self.seed,
            self.profile.name,
            failure is None,
            time.monotonic() - began,
            stats,
            failure,
            run_dir=str(run_dir) if failure is not None else "",
        )
        if failure is not None and failure.account is not None:
            result.failing_ops = [(s.batch, s.op) for s in self.executed.get(failure.account, [])]
        if self.shrunk is not None:
            result.shrunk = [(s.batch, s.op) for s in self.shrunk]
        return result

    async def _shrink(self, d: Driver, failure: SimFailure) -> None:
        assert failure.account is not None
        try:
            await self._settle_faults()
            template = d.lanes[failure.account]
            self.log(f"[sim] shrinking (at most {self.shrink_budget_s:.0f}s) ...")
            self.shrunk = await shrink(
                d,
                Auditor(d),
                template,
                self.executed.get(failure.account, []),
                failure.check,
                self.shrink_budget_s,
                self.log,
            )
        except Exception as exc:  # a broken shrink must not hide the failure
            self.log(f"[sim] shrink stopped: {exc!r}")

    def _done(self, driver: Driver, began: float) -> bool:
        p = self.profile
        if p.minutes:
            return time.monotonic() - began >= p.minutes * 60
        return driver.stats.steps >= p.steps

    async def _loop(self, plan: Plan, d: Driver, auditor: Auditor, began: float) -> None:
        first = plan.first_batch()
        self._note(first)
        await d.run_batch(first)
        await auditor.snapshot([lane for lane in d.lanes if lane.touched])
        last_audit = time.monotonic()
        while not self._done(d, began):
            batch = plan.next_batch()
            self._note(batch)
            await self._run_batch(batch, d, auditor)
            if time.monotonic() - last_audit >= self.profile.audit_every_s:
                await self._settle_faults()
                await auditor.deep()
                last_audit = time.monotonic()
            if d.stats.batches % 50 == 0:
                self.log(
                    f"[sim] batch {batch.index}: {d.stats.steps} steps, "
                    f"{sum(d.stats.faults.values())} faults, "
                    f"{time.monotonic() - began:.0f}s"
                )

    def _note(self, batch: Batch) -> None:
        at = time.monotonic() - self.began
        for idx, ops in batch.lanes.items():
            self.executed.setdefault(idx, []).extend(Step(at, batch.index, op) for op in ops)
        if batch.fault is not None:
            for steps in self.executed.values():
                steps.append(Step(at, batch.index, Op("fault", (str(batch.fault),))))

    async def _run_batch(self, batch: Batch, d: Driver, auditor: Auditor) -> None:
        if batch.fault is not None and batch.fault.kind == "redis_loss":
            if "crash_recovery" not in KNOWN_OPEN:
                await self._redis_loss(batch, d, auditor)
                return
            d.stats.known_open.setdefault("crash_recovery", "not run")
            batch.fault = Fault("redis_restart", {"down_s": 0.2}, None)
        fault_task = None
        if batch.fault is not None and not self._fault_running(batch.fault):
            fault_task = await self._start_fault(d, batch.fault)
        for lane in d.lanes:
            lane.touched = False
        await d.run_batch(batch)
        exits = d.world.check_workers()
        if exits:
            raise SimFailure("worker", "; ".join(exits))
        await auditor.snapshot([lane for lane in d.lanes if lane.touched])
        for op in batch.globals:
            await self._global(op, d, auditor, batch.index)
        del fault_task

    async def _redis_loss(self, batch: Batch, d: Driver, auditor: Auditor) -> None:
        """Redis with appendfsync everysec crashes as its host would: the writes of
        the last moments (this batch) never reached the disk. The append-only file
        is cut back to its size before the batch, Redis restarts from it, and the
        documented recovery runs (`rebuild`, or the gateways' start-up check)."""
        assert batch.fault is not None
        recovery = batch.fault.params["recovery"]
        await self._settle_faults()
        world = d.world
        areas = ("redis", "writer", "worker", "gateway")
        for a in areas:
            d.faults.begin(a)
        d.stats.faults[f"redis_loss:{recovery}"] += 1
        try:
            await world.set_fsync("everysec")
            saved = {lane.account_id: lane.model.one().seq for lane in d.lanes}
            cut_ms = now_ms()
            cut_size = world.aof_size()
            await d.run_batch(batch)
            await world.redis_crash(truncate_to=cut_size)
            if recovery == "gateway_restart":
                # The gateways' start-up ledger check fast-forwards what Redis lost.
                for i in range(len(world.gateways)):
                    world.kill_gateway(i)
                    await asyncio.to_thread(world.start_gateway, i)
            # The README's procedure after a Redis host crash: once the writer has
            # caught up, `rebuild` (it also marks lost Stripe credits owed again).
            await drain_stream(world)
            await asyncio.to_thread(world.run_cli, "rebuild")
            d.stats.lost_in_crash_window += await after_redis_loss(auditor, cut_ms, saved)
        finally:
            for a in areas:
                d.faults.end(a)

    def _fault_running(self, fault: Fault) -> bool:
        running = [t for t in self.tasks if not t.done()]
        self.tasks = running
        return any(t.get_name() == fault.kind for t in running) or len(running) >= 2

    async def _start_fault(self, d: Driver, fault: Fault) -> asyncio.Task[None]:
        hit = asyncio.Event()

        async def go() -> None:
            if fault.during_s:
                await asyncio.sleep(fault.during_s)
            await faults_mod.run_fault(d, fault, hit)

        task = asyncio.create_task(go(), name=fault.kind)
        self.tasks.append(task)
        if fault.during_s is None:
            # Until the fault is in force; a fault that fails before that is the
            # run's failure, not a wait without end.
            hit_wait = asyncio.ensure_future(hit.wait())
            await asyncio.wait({hit_wait, task}, return_when=asyncio.FIRST_COMPLETED)
            hit_wait.cancel()
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return task

    async def _settle_faults(self) -> None:
        """Let running faults finish their repair (an audit needs a whole system)."""
        for t in self.tasks:
            if not t.done():
                await t
            elif t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        self.tasks = []

    async def _global(self, op: Op, d: Driver, auditor: Auditor, batch: int) -> None:
        if op.kind == "fuzz":
            seed, count = op.args
            await self._settle_faults()
            await self.hostile.fuzz(seed, count)
            if not self.hand_written_done:
                self.hand_written_done = True
                await self.hostile.hand_written(random.Random(seed))
        elif op.kind == "contention":
            idx, item, n = op.args
            await d.run_contention(idx, item, n, batch)
            await auditor.snapshot([d.lanes[idx]])
        elif op.kind == "dupes":
            idx, n, kind, args = op.args
            await d.run_dupes(idx, n, Op(kind, args))
            await auditor.snapshot([d.lanes[idx]])
        elif op.kind == "sweep":
            if d.faults.recent("redis"):
                return
            at = now_ms()
            try:
                await expire_due_reservations(d.world.store)
            except RedisError:
                if d.faults.recent("redis"):
                    return  # a Redis fault began meanwhile
                raise
            lanes = [
                lane
                for lane in d.lanes
                if any(c.state == "open" for w in lane.model.worlds for c in w.calls.values())
            ]
            await auditor.snapshot(lanes, after_sweep_ms=at)


def result_json(result: Result, path: Path) -> None:
    data = {
        "seed": result.seed,
        "profile": result.profile,
        "ok": result.ok,
        "seconds": round(result.seconds, 1),
        "stats": result.stats,
        "failure": str(result.failure) if result.failure else None,
        "failing_ops": [[b, op.as_json()] for b, op in (result.shrunk or result.failing_ops)],
    }
    path.write_text(json.dumps(data, indent=2))


def default_database_url() -> str:
    return os.environ.get(
        "METERING_SIM_DATABASE_URL",
        os.environ.get("METERING_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
    )
