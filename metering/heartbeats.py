"""Heartbeats: every worker process (ledger writer, recharge worker, number
scheduler, notifier, continuous reconcile) writes one into the Redis hash
`m:workers` every `worker_heartbeat_interval_s`, under "<kind>/<name>":

    {"kind", "name", "host", "pid", "version", "started_us", "beat_us"}

The ops status endpoint and /metrics read them: a heartbeat older than
`worker_heartbeat_stale_s` is a worker that stopped (or hangs), one older than
`worker_heartbeat_forget_s` is dropped. A worker that stops cleanly removes
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from importlib import metadata
from typing import Any

import orjson

from metering.keys import workers_key
from metering.outages import REDIS_DOWN, pause
from metering.settings import Settings

log = logging.getLogger(__name__)
PACKAGE = "metering-gateway"


def service_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def now_us() -> int:
    return time.time_ns() // 1_000


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    kind: str
    name: str
    host: str
    pid: int
    version: str
    started_us: int
    beat_us: int

    @property
    def field(self) -> str:
        return f"{self.kind}/{self.name}"

    def view(self, settings: Settings, at_us: int) -> dict[str, Any]:
        age_s = max(0.0, (at_us - self.beat_us) / 1e6)
        return {
            **dataclasses.asdict(self),
            "age_s": round(age_s, 3),
            "stale": age_s > settings.worker_heartbeat_stale_s,
        }


class HeartbeatWriter:
    """One worker process's heartbeat, written until stopped."""

    def __init__(self, redis: Any, settings: Settings, kind: str, name: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        host = socket.gethostname()
        self.beat = Heartbeat(
            kind, name or f"{host}-{os.getpid()}", host, os.getpid(), service_version(), now_us(), 0
        )

    async def write(self) -> None:
        beat = dataclasses.replace(self.beat, beat_us=now_us())
        await self.redis.hset(workers_key(), beat.field, orjson.dumps(dataclasses.asdict(beat)))

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every interval until stop is set; then remove the heartbeat. A Redis
        outage is the worker's own to report: beats resume when Redis answers."""
        try:
            while not stop.is_set():
                try:
                    await self.write()
                except REDIS_DOWN as exc:
                    log.debug("heartbeat not written: %s", exc)
                await pause(stop, self.settings.worker_heartbeat_interval_s)
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                await self.redis.hdel(workers_key(), self.beat.field)


async def read_heartbeats(redis: Any, settings: Settings) -> list[Heartbeat]:
    """Every worker's last heartbeat, oldest kind first; forgets the long dead."""
    stored = await redis.hgetall(workers_key())
    beats, forget = [], []
    at = now_us()
    for field, raw in stored.items():
        try:
            beat = Heartbeat(**orjson.loads(raw))
        except (ValueError, TypeError):
            forget.append(field)
            continue
        if at - beat.beat_us > settings.worker_heartbeat_forget_s * 1e6:
            forget.append(field)
        else:
            beats.append(beat)
    if forget:
        await redis.hdel(workers_key(), *forget)
    return sorted(beats, key=lambda b: (b.kind, b.name))
