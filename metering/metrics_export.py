"""METRICS (metering/metrics.py) in Prometheus's text format, with the official
prometheus_client.

- Several gateway processes: `MultiprocessFiles` writes this process's totals
  into its own files of prometheus_client's multiprocess directory (the
  `PROMETHEUS_MULTIPROC_DIR` the gateway's start-up makes, gateway/metrics_dir.py),
  and `render` sums every process's files with prometheus_client's
  MultiProcessCollector. Writing absolute totals (not increments) makes a flush
  idempotent: one missed or repeated changes nothing.
- One process (a worker): `render` reads the totals from memory (TotalsCollector).

Figures that are not per process (ledger lag, open calls, worker heartbeats) are
computed when scraped and added as extra families (`gauge_family`).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString

from metering.metrics import Counter, Family, Gauge, Histogram, Key, Metrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _le(bounds: tuple[float, ...]) -> list[str]:
    return [floatToGoString(b) for b in (*bounds, math.inf)]  # type: ignore[no-untyped-call]


class MultiprocessFiles:
    """This process's totals, written to its files in the multiprocess directory."""

    def __init__(self, metrics: Metrics, directory: str, pid: int | None = None) -> None:
        """pid: the file's process id (default this process's; a test stands in
        for another process with it)."""
        if os.environ.get(MULTIPROC_ENV) != directory:
            # prometheus_client names the files from the environment variable.
            os.environ[MULTIPROC_ENV] = directory
        self.metrics = metrics
        self.directory = directory
        identify = os.getpid if pid is None else (lambda: pid)
        self._value_class = prometheus_values.MultiProcessValue(identify)  # type: ignore[no-untyped-call]
        # (family name, key, slot) -> [value object, last value written]
        self._values: dict[tuple[str, Key, int], list[Any]] = {}

    def flush(self) -> int:
        """Write every total that changed since the last flush; returns how many."""
        written = 0
        for family in self.metrics.families():
            for key, total in list(family.totals.items()):
                if isinstance(family, Histogram):
                    assert isinstance(total, list)
                    for slot, value in enumerate(list(total)):
                        written += self._write(family, key, slot, value)
                else:
                    written += self._write(family, key, 0, float(total))  # type: ignore[arg-type]
        return written

    def _write(self, family: Family, key: Key, slot: int, value: float) -> int:
        entry = self._values.get((family.name, key, slot))
        if entry is None:
            entry = self._values[(family.name, key, slot)] = [self._value(family, key, slot), None]
        if entry[1] == value:
            return 0
        entry[0].set(value)
        entry[1] = value
        return 1

    def _value(self, family: Family, key: Key, slot: int) -> Any:
        new = self._value_class
        if isinstance(family, Counter):
            base = family.name.removesuffix("_total")
            return new("counter", base, family.name, family.labels, key, family.help)
        if isinstance(family, Gauge):
            return new(
                "gauge",
                family.name,
                family.name,
                family.labels,
                key,
                family.help,
                multiprocess_mode=family.multiprocess_mode,
            )
        les = _le(family.bounds)
        if slot < len(les):
            return new(
                "histogram",
                family.name,
                family.name + "_bucket",
                (*family.labels, "le"),
                (*key, les[slot]),
                family.help,
            )
        return new("histogram", family.name, family.name + "_sum", family.labels, key, family.help)

    def close(self) -> None:
        prometheus_values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]


class TotalsCollector:
    """A prometheus_client collector over one process's totals (a worker's)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for family in self.metrics.families():
            totals = dict(family.totals)  # a copy: the worker's loop may add keys meanwhile
            if isinstance(family, Counter):
                counter = CounterMetricFamily(
                    family.name.removesuffix("_total"), family.help, labels=family.labels
                )
                for key, value in totals.items():
                    counter.add_metric(list(key), value)  # type: ignore[arg-type]
                yield counter
            elif isinstance(family, Gauge):
                gauge = GaugeMetricFamily(family.name, family.help, labels=family.labels)
                for key, value in totals.items():
                    gauge.add_metric(list(key), value)  # type: ignore[arg-type]
                yield gauge
            else:
                histogram = HistogramMetricFamily(family.name, family.help, labels=family.labels)
                les = _le(family.bounds)
                for key, slots in totals.items():
                    counts: list[float] = list(slots)  # type: ignore[call-overload]
                    cumulative, running = [], 0.0
                    for le, count in zip(les, counts[:-1], strict=True):
                        running += count
                        cumulative.append((le, running))
                    histogram.add_metric(list(key), cumulative, counts[-1])
                yield histogram


class StaticCollector:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def gauge_family(
    name: str, help_text: str, labels: tuple[str, ...], samples: Iterable[tuple[Key, float]]
) -> Metric:
    gauge = GaugeMetricFamily(name, help_text, labels=list(labels))
    for key, value in samples:
        gauge.add_metric(list(key), value)
    return gauge


def render(metrics: Metrics, directory: str | None, extra: Iterable[Metric] = ()) -> bytes:
    """The text exposition: every process's files summed (directory given), or
    this process's totals; plus the extra families."""
    registry = CollectorRegistry(auto_describe=False)
    if directory is not None:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(TotalsCollector(metrics))
    extra = list(extra)
    if extra:
        registry.register(StaticCollector(extra))
    return generate_latest(registry)


def empty_directory(directory: str) -> None:
    """Remove every process's files (at start: the counts of a previous run)."""
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def process_exited(directory: str, pid: int) -> None:
    """A gateway process died: its gauges go (a dead process has no open sockets).
    Its counters and histograms stay, or the totals would go backwards."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
