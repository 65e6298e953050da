"""The gateway's Prometheus multiprocess directory, handled for the operator.

`python -m gateway` makes (or empties) the directory before any worker starts
and tells every worker process where it is (`PROMETHEUS_MULTIPROC_DIR` and
`METERING_METRICS_DIR`): `METERING_METRICS_DIR` when set, else a private
temporary directory removed at exit. When a worker dies, the supervisor drops
its gauges (a dead process holds no sockets); its counters stay, or the totals
would go backwards. Each worker process writes its totals there every
`metrics_flush_interval_s` (MetricsFlusher) and before it answers a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

from gateway.live_hub import LiveHub
from metering.metrics import METRICS
from metering.metrics_export import MULTIPROC_ENV, MultiprocessFiles, empty_directory
from metering.outages import pause
from metering.settings import Settings

log = logging.getLogger(__name__)
DIR_ENV = "METERING_METRICS_DIR"


def prepare_directory(settings: Settings) -> tuple[str, Callable[[], None]]:
    """The directory every gateway process of this start writes to, emptied of a
    previous run's files; and what removes it at exit (a private one only)."""
    if settings.metrics_dir:
        directory = settings.metrics_dir
        os.makedirs(directory, exist_ok=True)
        empty_directory(directory)

        def keep() -> None:
            return None

        cleanup = keep
    else:
        directory = tempfile.mkdtemp(prefix="metering-metrics-")

        def remove() -> None:
            shutil.rmtree(directory, ignore_errors=True)

        cleanup = remove
    os.environ[MULTIPROC_ENV] = directory
    os.environ[DIR_ENV] = directory
    return directory, cleanup


class MetricsFlusher:
    """One gateway process's totals, written to its files periodically."""

    def __init__(self, settings: Settings, live_hub: LiveHub) -> None:
        self.settings = settings
        self.live_hub = live_hub
        self.files = MultiprocessFiles(METRICS, settings.metrics_dir)

    def update_gauges(self) -> None:
        ops = len(self.live_hub.ops)
        METRICS.live_clients.set(("ops",), ops)
        METRICS.live_clients.set(("account",), self.live_hub.count - ops)

    def flush(self) -> None:
        self.update_gauges()
        self.files.flush()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.flush()
                except OSError as exc:  # a full disk must not stop the gateway
                    log.warning("metrics not written to %s: %s", self.files.directory, exc)
                await pause(stop, self.settings.metrics_flush_interval_s)
        finally:
            with contextlib.suppress(OSError):
                self.flush()
