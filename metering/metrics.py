"""Prometheus metrics: every family in one place, recorded as per-process totals.

Recording is a dict update in this process (about 0.1 µs for a counter, 0.4 µs
for a histogram; measured in tests/test_metrics.py); nothing is written or
locked per request. The totals reach Prometheus in one of two ways
(metering/metrics_export.py):

- a gateway process writes them every `metrics_flush_interval_s` into its own
  file of prometheus_client's multiprocess directory (and before answering a
  scrape), and `/metrics` of any gateway process sums every process's file;
- a worker (one process) serves them on its own port straight from memory.

Why not prometheus_client's metric objects on the authorize path: in
multiprocess mode each `inc()` takes a lock and writes an mmap'd file; measured
on this machine 3.5 µs for a counter and 6 µs for a histogram observation
(10 and 18 µs with `labels()`), which for the four observations of a switch
request would be 10-30% of its ~150 µs of CPU. Here the same four cost ~1 µs.

Names follow Prometheus's conventions: the `metering_` prefix, base units
(seconds; money in micro-units, the product's base unit, named `_micros`),
`_total` for counters, and no account ids as labels (their number is unbounded).

There is one set of totals per process, `METRICS`, like prometheus_client's own
default registry: the multiprocess files are per process too.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

Key = tuple[str, ...]

# Request durations: the authorize path answers in ~1 ms; slow tails up to seconds.
HTTP_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# One EVALSHA round trip: ~0.1 ms on a quiet Redis.
SCRIPT_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)  # fmt: skip
BATCH_ROWS_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000)
WORK_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Counter:
    """A monotonically increasing total per label values."""

    kind = "counter"
    __slots__ = ("name", "help", "labels", "totals")

    def __init__(self, name: str, help_text: str, labels: Key = ()) -> None:
        assert name.endswith("_total"), name
        self.name = name
        self.help = help_text
        self.labels = labels
        self.totals: dict[Key, float] = {}

    def inc(self, key: Key = (), amount: float = 1) -> None:
        totals = self.totals
        totals[key] = totals.get(key, 0) + amount


class Histogram:
    """Observations per label values: a count per bucket (not cumulative; the
    last slot counts those above every bound, +Inf) and their sum."""

    kind = "histogram"
    __slots__ = ("name", "help", "labels", "bounds", "totals")

    def __init__(self, name: str, help_text: str, labels: Key, bounds: Iterable[float]) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self.bounds = tuple(float(b) for b in bounds)
        # key -> [count per bucket ..., count above the last bound, sum]
        self.totals: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        slots = self.slots(key)
        # Prometheus buckets are "less than or equal": bisect_left finds the first
        # bound >= value.
        slots[bisect.bisect_left(self.bounds, value)] += 1
        slots[-1] += value

    def slots(self, key: Key) -> list[float]:
        """The totals of `key`, for a caller that records into them itself (the
        switch's fast path, where a method call per request is measurable):
        `slots[bisect_left(bounds, value)] += 1; slots[-1] += value`. The list
        stays the key's for the life of the process."""
        slots = self.totals.get(key)
        if slots is None:
            slots = self.totals[key] = [0] * (len(self.bounds) + 1) + [0.0]
        return slots

    def observe_many(self, key: Key, value: float, count: int) -> None:
        """`count` observations of the same `value`."""
        slots = self.slots(key)
        slots[bisect.bisect_left(self.bounds, value)] += count
        slots[-1] += value * count


class Gauge:
    """A value per label values that this process sets. Across gateway processes
    the values are summed (`multiprocess_mode` livesum: a dead process's value
    goes with it)."""

    kind = "gauge"
    __slots__ = ("name", "help", "labels", "totals", "multiprocess_mode")

    def __init__(
        self, name: str, help_text: str, labels: Key = (), multiprocess_mode: str = "livesum"
    ) -> None:
        self.name = name
        self.help = help_text
        self.labels = labels
        self.totals: dict[Key, float] = {}
        self.multiprocess_mode = multiprocess_mode

    def set(self, key: Key, value: float) -> None:
        self.totals[key] = value


Family = Counter | Histogram | Gauge


class Metrics:
    """Every family this service exports. A process records only its own (the
    gateway its requests, the ledger writer its batches, ...); a family without
    samples is not exported."""

    def __init__(self) -> None:
        # ---- the gateway
        self.http_requests = Histogram(
            "metering_http_request_duration_seconds",
            "HTTP requests by route template, method and outcome (allowed, refused: 402 "
            "or 429, client_error, server_error), from the first byte handed to the app to "
            "the last byte of the answer.",
            ("route", "method", "outcome"),
            HTTP_BUCKETS_S,
        )
        self.script_calls = Histogram(
            "metering_redis_script_duration_seconds",
            "Round trip of one Lua script call (EVALSHA) by script: from the write that "
            "carried it (with the other calls of the same loop tick) to its reply; a call "
            "that timed out, its timeout.",
            ("script",),
            SCRIPT_BUCKETS_S,
        )
        self.reservations = Counter(
            "metering_reservations_total",
            "Call reservations by event: opened (reserve), extended, committed, released, "
            "expired (by the sweeper). Replays of a request are not counted.",
            ("event",),
        )
        self.live_clients = Gauge(
            "metering_live_clients",
            "Open live websockets by channel (account, ops).",
            ("channel",),
        )
        self.live_slow_clients_dropped = Counter(
            "metering_live_slow_clients_dropped_total",
            "Live websockets closed because the client did not read its updates (4408).",
        )
        # ---- the ledger writer
        self.debits = Counter(
            "metering_debits_total",
            "Debits by billing item, counted as the ledger writer commits their entries.",
            ("item",),
        )
        self.debit_micros = Counter(
            "metering_debit_micros_total",
            "Money debited, micro-units (1 USD = 1,000,000), by billing item.",
            ("item",),
        )
        self.credits = Counter(
            "metering_credits_total",
            "Credits by item (adding funds, adjustments), counted as the writer commits them.",
            ("item",),
        )
        self.credit_micros = Counter(
            "metering_credit_micros_total",
            "Money credited, micro-units, by item.",
            ("item",),
        )
        self.ledger_batch_rows = Histogram(
            "metering_ledger_writer_batch_rows",
            "Entries per batch the ledger writer committed.",
            (),
            BATCH_ROWS_BUCKETS,
        )
        self.ledger_batch_seconds = Histogram(
            "metering_ledger_writer_batch_duration_seconds",
            "Time to commit one batch into Postgres (COPY, insert, commit).",
            (),
            WORK_BUCKETS_S,
        )
        self.ledger_rows_written = Counter(
            "metering_ledger_writer_rows_total",
            "Entries the ledger writer committed (rate() is its rows per second).",
        )
        self.ledger_conflicts = Counter(
            "metering_ledger_writer_conflicts_total",
            "Entries whose (account, seq) already held a different row (kept aside).",
        )
        # ---- payments, numbers, notifications
        self.recharge_attempts = Counter(
            "metering_recharge_attempts_total",
            "Automatic recharge attempts by outcome (succeeded, declined, retrying, refused).",
            ("outcome",),
        )
        self.renewals = Counter(
            "metering_number_renewals_total",
            "Phone number renewals by outcome (renewed, failed, released).",
            ("outcome",),
        )
        self.emails = Counter(
            "metering_emails_total",
            "Emails by kind and outcome (sent, failed).",
            ("kind", "outcome"),
        )
        self.webhooks = Counter(
            "metering_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (sent: a 2xx; failed).",
            ("outcome",),
        )
        # ---- continuous reconcile
        self.reconcile_accounts = Counter(
            "metering_reconcile_accounts_checked_total",
            "Accounts the continuous reconcile compared (Redis against the ledger).",
        )
        self.reconcile_differences = Counter(
            "metering_reconcile_differences_total",
            "Differences the continuous reconcile found, by kind.",
            ("kind",),
        )
        self.reconcile_open = Gauge(
            "metering_reconcile_differences",
            "Differences found by the last complete pass over every account (0: in line).",
            (),
            "max",
        )
        self.reconcile_passes = Counter(
            "metering_reconcile_passes_total",
            "Complete passes of the continuous reconcile over every account.",
        )
        self.reconcile_pass_seconds = Gauge(
            "metering_reconcile_last_pass_seconds",
            "Duration of the last complete pass.",
            (),
            "max",
        )

    def families(self) -> Iterator[Family]:
        for value in vars(self).values():
            if isinstance(value, Counter | Histogram | Gauge):
                yield value


METRICS = Metrics()
