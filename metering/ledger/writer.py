"""The ledger writer: moves ledger entries from the shard streams into Postgres,
exactly once in effect.

Cycle, per batch (at most `ledger_batch_rows_max` entries, or whatever arrived
within `ledger_batch_wait_ms` of the first one):

1. XREADGROUP from the shards this writer owns (consumer group
   `ledger_consumer_group`; a restarted writer first re-reads its own pending
   entries, and every `ledger_claim_interval_ms` it XAUTOCLAIMs entries another
   consumer left pending for more than `ledger_claim_idle_ms`);
2. COPY the batch into a session temp table, INSERT ... SELECT ... ON CONFLICT
   (account_id, seq) DO NOTHING, so an entry delivered twice lands once; an entry
   whose key holds a different row goes to ledger_conflicts, not to the void;
3. COMMIT, then XACK (never before: a crash in between only redelivers);
4. trim each stream below min(oldest pending, last delivered + 1) in one script.

Several writers split the shards: writer i of n owns the shards s with
s % n == i. Postgres down: bounded retries with doubling backoff, then exit
non-zero (a supervisor restarts it; nothing was acknowledged). Redis down or
restarting: waited out with bounded backoff (metering/outages.py), then the
writer re-reads its own pending entries and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from metering.errors import DatabaseNotMigrated
from metering.keys import ShardKeys
from metering.ledger.database import DATABASE_DOWN, connect
from metering.ledger.migrate import require_migrated
from metering.ledger_entries import CREDIT_ITEMS, LedgerEntry
from metering.metrics import METRICS
from metering.outages import REDIS_DOWN, Outage, pause, until_it_answers
from metering.polling import stop_on_signals
from metering.settings import Settings
from metering.shard_streams import claim_idle, ensure_groups
from metering.store import Store, open_store, run_each

log = logging.getLogger(__name__)

COLUMNS = (
    "account_id",
    "seq",
    "item",
    "amount_micros",
    "balance_after_micros",
    "request_id",
    "at_us",
    "detail",
)
STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ledger_staging (LIKE ledger_entries) ON COMMIT DELETE ROWS"
)
INSERT_SQL = (
    "INSERT INTO ledger_entries SELECT * FROM ledger_staging "
    "ON CONFLICT (account_id, seq) DO NOTHING"
)
CONFLICTS_SQL = """
INSERT INTO ledger_conflicts (account_id, seq, item, amount_micros, balance_after_micros,
                              request_id, at_us, detail)
SELECT s.account_id, s.seq, s.item, s.amount_micros, s.balance_after_micros,
       s.request_id, s.at_us, s.detail
FROM ledger_staging s JOIN ledger_entries l USING (account_id, seq)
WHERE (s.item, s.amount_micros, s.balance_after_micros, s.request_id, s.at_us, s.detail)
      IS DISTINCT FROM
      (l.item, l.amount_micros, l.balance_after_micros, l.request_id, l.at_us, l.detail)
ON CONFLICT DO NOTHING
"""
# Idle wait between polls when the streams cannot be read with BLOCK (cluster).
POLL_IDLE_S = 0.05
# How often a running writer logs its throughput.
REPORT_INTERVAL_S = 10.0


def count_committed(
    entries: Iterable[LedgerEntry], inserted: int, conflicting: int, seconds: float
) -> None:
    """The batch's figures for /metrics: its size and commit time, and the money
    it moved by item (debits and credits as the ledger records them). An entry
    redelivered after a writer died is counted again by the writer that commits
    it again."""
    rows = 0
    for e in entries:
        rows += 1
        key = (e.item,)
        if e.amount_micros > 0 or e.item in CREDIT_ITEMS:
            METRICS.credits.inc(key)
            METRICS.credit_micros.inc(key, e.amount_micros)
        else:
            METRICS.debits.inc(key)
            METRICS.debit_micros.inc(key, -e.amount_micros)
    METRICS.ledger_batch_rows.observe((), rows)
    METRICS.ledger_batch_seconds.observe((), seconds)
    METRICS.ledger_rows_written.inc((), inserted)
    if conflicting:
        METRICS.ledger_conflicts.inc((), conflicting)


class WriterStalled(RuntimeError):
    """Postgres stayed unreachable for all `ledger_retry_max` attempts at one batch."""


@dataclasses.dataclass(slots=True)
class WriterStats:
    rows_read: int = 0
    rows_inserted: int = 0
    rows_conflicting: int = 0
    batches: int = 0
    entries_trimmed: int = 0
    write_seconds: float = 0.0


@dataclasses.dataclass(slots=True)
class Batch:
    """Entries read but not yet committed, keyed by (stream, entry id)."""

    entries: dict[tuple[str, str], LedgerEntry] = dataclasses.field(default_factory=dict)
    # Stream entries with no usable fields (trimmed while pending): acked, not written.
    empty: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, stream: str, messages: list[Any]) -> int:
        added = 0
        for entry_id, fields in messages:
            if not fields:
                self.empty.setdefault(stream, []).append(entry_id)
                continue
            if not self.entries:
                self.started = time.monotonic()
            key = (stream, entry_id)
            if key not in self.entries:
                self.entries[key] = LedgerEntry.from_stream(fields)
                added += 1
        return added


async def write_batch(conn: Any, entries: list[LedgerEntry]) -> tuple[int, int]:
    """COPY to staging, insert what is new, keep conflicting rows aside, commit.
    Returns (rows inserted, rows conflicting)."""
    records = [
        (
            e.account_id,
            e.seq,
            e.item,
            e.amount_micros,
            e.balance_after_micros,
            e.request_id,
            e.at_us,
            e.detail,
        )
        for e in entries
    ]
    async with conn.transaction():
        await conn.copy_records_to_table("ledger_staging", records=records, columns=COLUMNS)
        inserted = await conn.execute(INSERT_SQL)
        conflicting = await conn.execute(CONFLICTS_SQL)
    return int(inserted.split()[-1]), int(conflicting.split()[-1])


def owned_shards(shard_count: int, writer_index: int, writer_count: int) -> list[int]:
    """Writer i of n owns the shards s with s % n == i."""
    if not 0 <= writer_index < writer_count:
        raise ValueError("writer index must be in [0, writer count)")
    return [s for s in range(shard_count) if s % writer_count == writer_index]


class LedgerWriter:
    """One writer over a set of shards; `run` until `stop` is set (or drained)."""

    def __init__(self, store: Store, shards: list[int], consumer: str) -> None:
        self.store = store
        self.settings: Settings = store.settings
        self.group = self.settings.ledger_consumer_group
        self.consumer = consumer
        self.streams = [ShardKeys(s).ledger for s in shards]
        self.stats = WriterStats()
        self._conn: Any = None
        self._last_claim = 0.0
        self._stop = asyncio.Event()
        self._last_report = time.monotonic()
        self._rows_reported = 0
        backoff_max_s = self.settings.outage_backoff_max_s
        self.redis_outage = Outage(f"ledger writer {consumer}", log, backoff_max_s, store.redis)
        self.database_outage = Outage(
            f"ledger writer {consumer}", log, self.settings.ledger_retry_backoff_max_s
        )

    async def ensure_groups(self) -> None:
        """Create the consumer group on each owned stream (from the start: id 0)."""
        await ensure_groups(self.store.redis, self.streams, self.group)

    async def run(self, stop: asyncio.Event, drain: bool = False) -> WriterStats:
        """Move entries until stop is set; with drain, return once nothing is left.
        A Redis restart is ridden out: what was read but not committed stays
        pending in the group and is re-read once Redis answers again."""
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    await self._move(stop, drain)
                    break
                except REDIS_DOWN as exc:
                    await self.redis_outage.wait(exc, stop)
        finally:
            await self.close()
        return self.stats

    async def _move(self, stop: asyncio.Event, drain: bool) -> None:
        await self.ensure_groups()
        await self._recover_own_pending()
        self.redis_outage.ended()
        batch = Batch()
        while not stop.is_set():
            try:
                got = await self._fill(batch)
                self.redis_outage.ended()
                due = len(batch) >= self.settings.ledger_batch_rows_max or (
                    len(batch) > 0
                    and (time.monotonic() - batch.started) * 1000
                    >= self.settings.ledger_batch_wait_ms
                )
                if due or (got == 0 and (batch.entries or batch.empty)):
                    await self._flush(batch)
                    batch = Batch()
                elif got == 0 and drain and await self._drained():
                    return
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost its data (or was rebuilt): the groups are gone. What
                # was committed stays committed; the rest is re-read from id 0.
                log.warning("consumer group missing; recreating it")
                batch = Batch()
                await self.ensure_groups()
        if batch.entries or batch.empty:
            await self._flush(batch)  # a clean stop leaves nothing pending

    async def _recover_own_pending(self) -> None:
        """Write what this consumer had read but not acknowledged when it died."""
        while True:
            batch = Batch()
            await self._read(batch, "0")
            if not batch.entries and not batch.empty:
                return
            await self._flush(batch)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _fill(self, batch: Batch) -> int:
        """Read new entries (and claim abandoned ones); returns how many were added."""
        got = 0
        if time.monotonic() - self._last_claim >= self.settings.ledger_claim_interval_ms / 1000:
            self._last_claim = time.monotonic()
            got += await self._claim(batch)
        room = self.settings.ledger_batch_rows_max - len(batch)
        if room > 0:
            got += await self._read(batch, ">", room)
        return got

    async def _read(self, batch: Batch, start: str, count: int | None = None) -> int:
        redis = self.store.redis
        # COUNT applies per stream: split the room so a batch stays within rows_max.
        count = max(1, (count or self.settings.ledger_batch_rows_max) // len(self.streams))
        got = 0
        if self.settings.redis_cluster:
            # Streams of different shards live in different slots: one command each,
            # pipelined (the cluster client splits the pipeline per node).
            async with redis.pipeline(transaction=False) as pipe:
                for stream in self.streams:
                    pipe.xreadgroup(self.group, self.consumer, {stream: start}, count=count)
                answers = await pipe.execute()
            for answer in answers:
                for stream, messages in answer or []:
                    got += batch.add(stream, messages)
            if got == 0 and start == ">" and not batch.entries:
                await asyncio.sleep(POLL_IDLE_S)
            return got
        # One server: one blocking read over all owned streams. While a batch is
        # open, block only until its deadline.
        block_ms = self.settings.ledger_batch_wait_ms
        if batch.entries:
            waited_ms = (time.monotonic() - batch.started) * 1000
            block_ms = max(1, int(self.settings.ledger_batch_wait_ms - waited_ms))
        answer = await redis.xreadgroup(
            self.group,
            self.consumer,
            {s: start for s in self.streams},
            count=count,
            block=block_ms if start == ">" else None,
        )
        for stream, messages in answer or []:
            got += batch.add(stream, messages)
        return got

    async def _claim(self, batch: Batch) -> int:
        """Take over entries pending longer than ledger_claim_idle_ms (a dead writer's)."""
        got = 0
        for stream in self.streams:
            room = self.settings.ledger_batch_rows_max - len(batch)
            if room <= 0:
                break
            messages = await claim_idle(
                self.store.redis,
                stream,
                self.group,
                self.consumer,
                self.settings.ledger_claim_idle_ms,
                room,
            )
            got += batch.add(stream, messages)
        if got:
            log.info("claimed %d ledger entries left pending by another writer", got)
        return got

    async def _drained(self) -> bool:
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xpending(stream, self.group)
            answers = await pipe.execute()
        return all(int(a["pending"]) == 0 for a in answers)

    async def _flush(self, batch: Batch) -> None:
        by_key: dict[tuple[str, int], LedgerEntry] = {}
        for entry in batch.entries.values():
            by_key.setdefault((entry.account_id, entry.seq), entry)
        if by_key:
            began = time.monotonic()
            inserted, conflicting = await self._write_with_retry(list(by_key.values()))
            self.stats.write_seconds += time.monotonic() - began
            count_committed(by_key.values(), inserted, conflicting, time.monotonic() - began)
            self.stats.rows_inserted += inserted
            self.stats.rows_conflicting += conflicting
            if conflicting:
                log.error(
                    "%d ledger entries conflict with different rows already in "
                    "Postgres; kept in ledger_conflicts (run reconcile)",
                    conflicting,
                )
        # Committed: now, and only now, acknowledge and trim.
        ids: dict[str, list[str]] = {}
        for stream, entry_id in batch.entries:
            ids.setdefault(stream, []).append(entry_id)
        for stream, empty_ids in batch.empty.items():
            ids.setdefault(stream, []).extend(empty_ids)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream, stream_ids in ids.items():
                pipe.xack(stream, self.group, *stream_ids)
            await pipe.execute()
        trimmed = await run_each(
            self.store,
            self.store.scripts["trim_ledger"],
            [([stream], [self.group]) for stream in ids],
        )
        self.stats.entries_trimmed += sum(int(t[0]) for t in trimmed)
        self.stats.rows_read += len(batch.entries)
        self.stats.batches += 1
        now = time.monotonic()
        if now - self._last_report >= REPORT_INTERVAL_S:
            rows = self.stats.rows_inserted - self._rows_reported
            log.info(
                "ledger writer %s: %d rows in the last %.0f s (%.0f rows/s), %d in all",
                self.consumer,
                rows,
                now - self._last_report,
                rows / (now - self._last_report),
                self.stats.rows_inserted,
            )
            self._last_report, self._rows_reported = now, self.stats.rows_inserted

    async def _write_with_retry(self, entries: list[LedgerEntry]) -> tuple[int, int]:
        """Commit one batch, riding out a Postgres restart for up to
        `ledger_retry_max` attempts (backoff up to ledger_retry_backoff_max_s)."""
        attempts = self.settings.ledger_retry_max
        for attempt in range(1, attempts + 1):
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self.settings)
                    await require_migrated(self._conn)
                    await self._conn.execute(STAGING_DDL)
                result = await write_batch(self._conn, entries)
            except DATABASE_DOWN as exc:
                await self.close()
                if attempt == attempts or self._stop.is_set():
                    raise WriterStalled(
                        f"Postgres unreachable ({attempt} attempts); nothing was "
                        "acknowledged, a restarted writer re-reads the batch"
                    ) from exc
                await self.database_outage.wait(exc, self._stop)
                continue
            self.database_outage.ended()
            return result
        raise AssertionError("unreachable")


async def run_in_process(store: Store, stop: asyncio.Event) -> None:
    """A writer task for the gateway's lifespan (ledger_writer_in_gateway): owns every
    shard and restarts itself after a failure, so a Postgres outage never ends it."""
    consumer = f"gateway-{socket.gethostname()}-{os.getpid()}"
    shards = list(range(store.settings.shard_count))
    while not stop.is_set():
        writer = LedgerWriter(store, shards, consumer)
        try:
            await writer.run(stop)
        except Exception:
            log.exception("ledger writer failed; restarting it")
            await pause(stop, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--writer-index",
        type=int,
        default=0,
        help="this writer's number, 0..count-1 (owns shards s %% count == index)",
    )
    parser.add_argument(
        "--writer-count", type=int, default=1, help="how many writers split the shards"
    )
    parser.add_argument(
        "--consumer",
        default=None,
        help="consumer name in the group (default writer-<index>-of-<count>, "
        "stable so a restarted writer re-reads its own pending entries)",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="exit once every owned stream is empty of unwritten entries",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """`python -m metering ledger-writer`."""
    shards = owned_shards(settings.shard_count, args.writer_index, args.writer_count)
    consumer = args.consumer or f"writer-{args.writer_index}-of-{args.writer_count}"
    stop = stop_on_signals()
    # Started while Redis restarts: wait for it rather than exit.
    starting = Outage(f"ledger writer {consumer}", log, settings.outage_backoff_max_s)
    store = await until_it_answers(starting, stop, lambda: open_store(settings))
    if store is None:
        return 0
    writer = LedgerWriter(store, shards, consumer)
    began = time.monotonic()
    log.info("ledger writer %s: %d shards", consumer, len(shards))
    try:
        stats = await writer.run(stop, drain=args.drain)
    except WriterStalled as exc:
        log.error("%s", exc)
        return 3
    except DatabaseNotMigrated as exc:
        log.error("the ledger writer stops: %s", exc)
        return 2
    finally:
        await store.redis.aclose()
    elapsed_s = time.monotonic() - began
    print(
        f"ledger writer {consumer}: {stats.rows_inserted} rows inserted, "
        f"{stats.rows_read} read, {stats.rows_conflicting} conflicting, "
        f"{stats.batches} batches in {elapsed_s:.2f}s"
    )
    return 0
