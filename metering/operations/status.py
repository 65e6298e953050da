"""What an operator asks first: is it ready, how far behind is the ledger, which
workers are alive, how many recharges wait, which versions run. The same
figures feed `GET /v1/ops/status`, `/readyz` and the gauges `/metrics` computes
when scraped.

Every read is bounded by the store's and the database's own timeouts; a part
whose server does not answer says so (`"unavailable"`) instead of failing the
whole report, so the report is most useful exactly when something is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson

from metering.heartbeats import Heartbeat, now_us, read_heartbeats, service_version
from metering.keys import all_shards, reconcile_summary_key
from metering.ledger.database import DATABASE_DOWN, acquire
from metering.ledger.lag import LedgerLag, ledger_lag
from metering.ledger.migrate import MIGRATE_COMMAND, migration_files, missing_migrations
from metering.metrics_export import gauge_family
from metering.outages import REDIS_DOWN
from metering.payments.recharge_worker import recharge_backlog
from metering.settings import Settings
from metering.store import Store

T = TypeVar("T")
UNAVAILABLE = "unavailable"
# What a server that is down or too slow raises.
REDIS_AWAY: tuple[type[BaseException], ...] = (*REDIS_DOWN, TimeoutError)
AWAY: tuple[type[BaseException], ...] = (*REDIS_DOWN, *DATABASE_DOWN, TimeoutError)


async def _bounded(work: Awaitable[T], timeout_s: float) -> T:
    return await asyncio.wait_for(work, timeout_s)


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaState:
    """The database's migrations against this version's (None: no answer)."""

    expected: str
    missing: list[str] | None

    @property
    def ready(self) -> bool:
        return self.missing is not None and not self.missing

    def as_dict(self) -> dict[str, Any]:
        if self.missing is None:
            return {"expected": self.expected, "state": UNAVAILABLE}
        return {
            "expected": self.expected,
            "state": "migrated" if not self.missing else "not_migrated",
            "missing": self.missing,
            **({"fix": f"run `{MIGRATE_COMMAND}`"} if self.missing else {}),
        }


async def schema_state(db: Any, settings: Settings) -> SchemaState:
    expected = migration_files()[-1][0]
    try:
        async with acquire(db, settings.database_timeout_s) as conn:
            missing = await _bounded(missing_migrations(conn), settings.database_timeout_s)
    except Exception:  # no answer (Unavailable from acquire, a timeout), or refused
        return SchemaState(expected, None)
    return SchemaState(expected, missing)


class Readiness:
    """/readyz: Redis answers, the scripts are loaded (loaded again if a restarted
    Redis lost them), and a Postgres that answers carries every migration. A
    Postgres that does not answer leaves the gateway ready: the authorize path
    never uses it (the endpoints that do answer 503 meanwhile). The schema check
    is trusted for `readiness_schema_check_interval_s`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._schema: SchemaState | None = None
        self._schema_at = 0.0

    async def check(self, store: Store, db: Any) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        timeout_s = self.settings.redis_timeout_s
        try:
            await _bounded(store.redis.ping(), timeout_s)
            checks["redis"] = "ok"
            reloaded = await _bounded(load_missing_scripts(store), timeout_s)
            checks["scripts"] = {"loaded": len(store.scripts.all()), "reloaded": reloaded}
        except REDIS_AWAY as exc:
            checks["redis"] = f"{UNAVAILABLE}: {type(exc).__name__}"
        now = time.monotonic()
        if (
            self._schema is None
            or self._schema.missing is None
            or now - self._schema_at >= self.settings.readiness_schema_check_interval_s
        ):
            self._schema, self._schema_at = await schema_state(db, self.settings), now
        checks["schema"] = self._schema.as_dict()
        ready = checks["redis"] == "ok" and self._schema.missing in (None, [])
        return ready, checks


async def load_missing_scripts(store: Store) -> int:
    """SCRIPT EXISTS every script; load those a restarted Redis lost."""
    scripts = store.scripts.all()
    exists = await store.redis.script_exists(*[s.sha for s in scripts])
    if isinstance(exists, dict):  # a cluster answers per node: loaded on every node?
        present = [all(flags) for flags in zip(*exists.values(), strict=True)]
    else:
        present = [bool(flag) for flag in exists]
    lost = [s for s, ok in zip(scripts, present, strict=True) if not ok]
    for script in lost:
        await store.redis.script_load(script.source)
    return len(lost)


async def open_reservations(store: Store) -> int:
    """Calls holding a reservation now: the members of every shard's expiry set."""
    shards = all_shards(store.settings.shard_count)
    async with store.redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.zcard(shard.expiry)
        counts = await pipe.execute()
    return sum(int(c) for c in counts)


def lag_by_group(lag: LedgerLag, shards_per_group: int) -> list[tuple[str, int, int]]:
    """(group label "first-last", entries behind, oldest age ms or -1) per group of
    consecutive shards: a bounded number of series whatever the shard count."""
    out = []
    shards = lag.shards
    for start in range(0, len(shards), shards_per_group):
        group = shards[start : start + shards_per_group]
        ages = [s.oldest_age_ms for s in group if s.oldest_age_ms >= 0]
        out.append(
            (
                f"{group[0].shard}-{group[-1].shard}",
                sum(s.entries_behind for s in group),
                max(ages) if ages else -1,
            )
        )
    return out


def _workers_view(beats: list[Heartbeat], settings: Settings) -> list[dict[str, Any]]:
    at = now_us()
    return [b.view(settings, at) for b in beats]


async def _server_versions(store: Store, db: Any, settings: Settings) -> dict[str, Any]:
    versions: dict[str, Any] = {}
    try:
        info = await _bounded(store.redis.info("server"), settings.redis_timeout_s)
        if "redis_version" not in info and info:  # a cluster answers per node
            info = next(iter(info.values()))
        versions["redis"] = info.get("redis_version")
    except REDIS_AWAY:
        versions["redis"] = UNAVAILABLE
    try:
        async with acquire(db, settings.database_timeout_s) as conn:
            versions["postgres"] = await conn.fetchval("SHOW server_version")
    except Exception:
        versions["postgres"] = UNAVAILABLE
    return versions


async def _part(work: Awaitable[T], timeout_s: float) -> T | str:
    """One part of the report, or UNAVAILABLE when its server does not answer."""
    try:
        return await _bounded(work, timeout_s)
    except AWAY:
        return UNAVAILABLE
    except Exception as exc:  # Unavailable (the pool), a database not migrated
        return f"{UNAVAILABLE}: {exc}"


async def status_report(store: Store, db: Any, settings: Settings) -> dict[str, Any]:
    """GET /v1/ops/status and `python -m metering status`."""
    timeout_s = max(settings.redis_timeout_s, settings.database_timeout_s)
    lag = await _part(ledger_lag(store), timeout_s)
    beats = await _part(read_heartbeats(store.redis, settings), timeout_s)
    backlog = await _part(recharge_backlog(db, now_us()), timeout_s)
    reconcile = await _part(_reconcile_summary(store), timeout_s)
    schema = await schema_state(db, settings)
    return {
        "versions": {
            "service": service_version(),
            "python": platform.python_version(),
            **await _server_versions(store, db, settings),
            "schema": schema.as_dict(),
        },
        "ledger_lag": lag.as_dict() if isinstance(lag, LedgerLag) else lag,
        "workers": _workers_view(beats, settings) if isinstance(beats, list) else beats,
        "recharge_backlog": backlog,
        "reconcile": reconcile,
    }


async def _reconcile_summary(store: Store) -> dict[str, Any] | None:
    """The continuous reconcile's last complete pass (None: never ran)."""
    raw = await store.redis.get(reconcile_summary_key())
    return None if raw is None else dict(orjson.loads(raw))


async def scrape_families(store: Store, db: Any, settings: Settings) -> list[Any]:
    """The gauges /metrics computes when scraped: the same for every gateway
    process (alert on their max), absent when their server does not answer."""
    timeout_s = settings.redis_timeout_s
    families = [
        gauge_family(
            "metering_build_info",
            "This gateway's version (the value is always 1).",
            ("version", "python"),
            [((service_version(), platform.python_version()), 1)],
        )
    ]
    redis_up = 1
    try:
        await _bounded(store.redis.ping(), timeout_s)
    except REDIS_AWAY:
        redis_up = 0
    families.append(
        gauge_family(
            "metering_redis_up",
            "1 when Redis answered this scrape's PING, 0 when it did not.",
            (),
            [((), redis_up)],
        )
    )
    if redis_up:
        families += await _redis_gauges(store, settings)
    families += await _postgres_gauges(db, settings)
    return families


async def _redis_gauges(store: Store, settings: Settings) -> list[Any]:
    timeout_s = settings.redis_timeout_s
    out = []
    try:
        lag = await _bounded(ledger_lag(store), timeout_s)
        groups = lag_by_group(lag, settings.metrics_shards_per_group)
        out.append(
            gauge_family(
                "metering_ledger_entries_behind",
                "Ledger entries not yet committed to Postgres, per group of shards.",
                ("shard_group",),
                [((label,), behind) for label, behind, _ in groups],
            )
        )
        out.append(
            gauge_family(
                "metering_ledger_oldest_entry_age_seconds",
                "Age of the oldest ledger entry not yet in Postgres, per group of shards "
                "(0: none behind).",
                ("shard_group",),
                [((label,), max(age, 0) / 1000) for label, _, age in groups],
            )
        )
        out.append(
            gauge_family(
                "metering_reservations_open",
                "Calls holding a reservation now (every shard's expiry set).",
                (),
                [((), await _bounded(open_reservations(store), timeout_s))],
            )
        )
        beats = await _bounded(read_heartbeats(store.redis, settings), timeout_s)
        at = now_us()
        alive: dict[str, int] = {}
        stale: dict[str, int] = {}
        for beat in beats:
            view = beat.view(settings, at)
            target = stale if view["stale"] else alive
            target[beat.kind] = target.get(beat.kind, 0) + 1
        kinds = sorted(set(alive) | set(stale))
        out.append(
            gauge_family(
                "metering_workers_alive",
                "Worker processes by kind whose heartbeat is fresh.",
                ("kind",),
                [((k,), alive.get(k, 0)) for k in kinds],
            )
        )
        out.append(
            gauge_family(
                "metering_workers_stale",
                "Worker processes by kind whose last heartbeat is older than "
                "METERING_WORKER_HEARTBEAT_STALE_S (stopped or hanging).",
                ("kind",),
                [((k,), stale.get(k, 0)) for k in kinds],
            )
        )
    except REDIS_AWAY:
        pass
    return out


async def _postgres_gauges(db: Any, settings: Settings) -> list[Any]:
    try:
        backlog = await _bounded(recharge_backlog(db, now_us()), settings.database_timeout_s)
    except Exception:  # Postgres down, not migrated: the gauges are absent
        return [
            gauge_family(
                "metering_postgres_up",
                "1 when Postgres answered this scrape, 0 when it did not.",
                (),
                [((), 0)],
            )
        ]
    return [
        gauge_family(
            "metering_postgres_up",
            "1 when Postgres answered this scrape, 0 when it did not.",
            (),
            [((), 1)],
        ),
        gauge_family(
            "metering_recharge_episodes",
            "Automatic recharge episodes open, and of those due for an attempt now.",
            ("state",),
            [(("open",), backlog["open_episodes"]), (("due",), backlog["due_episodes"])],
        ),
        gauge_family(
            "metering_recharge_oldest_due_age_seconds",
            "How long the oldest due recharge episode has waited (0: none due).",
            (),
            [((), backlog["oldest_due_age_s"] or 0)],
        ),
    ]
