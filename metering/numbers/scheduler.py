"""The number scheduler: `python -m metering number-scheduler` (several may run).

Each round it
1. records purchases and the switch's renewals from the shard streams
   `m:{sNNN}:numbers` into the inventory (consumer group, acknowledged after
   the Postgres commit);
2. renews what is due. Due numbers are locked FOR UPDATE SKIP LOCKED in one
   transaction, so two schedulers never work the same number; a scheduler killed
   mid-run rolls its transaction back and the next one redoes the work. The
   charge is debit.lua's "phone number charge (renewal)" with the id
   auto:<number>:<bought_at_us>:<period>, so a redone renewal is answered from
   the first charge instead of charging again: once per number and period.

A renewal the balance cannot pay suspends the number (calls and texts naming it
are refused), is retried after each interval of the retry schedule, and past
the grace the number is released. Each step is an account event recorded in the
same transaction (number.renewed, number.renewal_failed, number.released); the
notifier emails the customer and sends the webhooks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import time
from typing import Any

from metering import debits, phone_numbers
from metering.errors import InsufficientFunds, UnknownNumber
from metering.ledger.database import create_pool
from metering.metrics import METRICS
from metering.notify.outbox import AccountEvent, record_event
from metering.numbers import inventory
from metering.numbers.inventory import US, HeldNumber
from metering.polling import poll, stop_on_signals
from metering.settings import Settings
from metering.shard_streams import Entry, ShardStreamReader
from metering.store import Store, open_store

log = logging.getLogger(__name__)

SQL_CLAIM_DUE = f"""
SELECT {inventory.COLUMNS} FROM numbers
WHERE status IN ('active', 'suspended') AND renewal = 'automatic' AND next_attempt_at_us <= $1
ORDER BY next_attempt_at_us LIMIT $2 FOR UPDATE SKIP LOCKED"""
# metering_number_renewals_total{outcome}: paid, refused (suspended or still
# suspended), released, or not tried for an error (tried again later).
RENEWED, FAILED, RELEASED, ERROR = ("renewed",), ("failed",), ("released",), ("error",)
# A switch renewal whose purchase is not recorded after this long is dropped
# (its stream entry was lost with Redis, or the number was released since).
ORPHAN_RENEWAL_S = 3_600


def now_us() -> int:
    return time.time_ns() // 1_000


@dataclasses.dataclass(slots=True)
class NumberScheduler:
    store: Store
    db: Any  # asyncpg pool
    settings: Settings
    consumer: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    reader: ShardStreamReader = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.reader = ShardStreamReader(
            self.store,
            lambda shard: shard.numbers,
            self.settings.number_scheduler_consumer_group,
            self.consumer,
        )

    # ---- intake -------------------------------------------------------------

    async def record_stream(self) -> int:
        """Record purchases and switch renewals; returns how many entries."""
        entries = await self.reader.read(self.settings.number_scheduler_batch_max)
        done: list[Entry] = []
        for entry in entries:
            try:
                if await self._record(entry[2]):
                    done.append(entry)
            except Exception:
                log.exception("could not record number entry %s", entry[1])
        await self.reader.done(done)
        return len(entries)

    async def _record(self, f: dict[str, str]) -> bool:
        """True when the entry is recorded (or never will be): acknowledge it."""
        at_us = int(f["at_us"])
        async with self.db.acquire() as conn, conn.transaction():
            if f["kind"] == "purchase":
                await inventory.record_purchase(
                    conn,
                    f["account_id"],
                    f["number"],
                    f["renewal"],
                    f["request_id"],
                    at_us,
                    int(f["renewal_micros"]),
                    self.settings.number_renewal_period_s,
                )
                return True
            row = await conn.fetchrow(inventory.SQL_FOR_UPDATE, f["account_id"], f["number"])
            if row is None or row["bought_at_us"] > at_us:
                # The purchase is not recorded yet (another scheduler has it): later.
                return now_us() - at_us > ORPHAN_RENEWAL_S * US
            held = HeldNumber.from_row(row)
            paid = await inventory.record_period_paid(
                conn,
                held.account_id,
                held.number,
                f["request_id"],
                held.periods_paid,
                "switch",
                int(f["renewal_micros"]),
                at_us,
            )
            if paid is not None:
                await self._renewed_event(conn, held, int(f["renewal_micros"]), paid[1], "switch")
            return True

    # ---- renewals -------------------------------------------------------------

    async def renew_due(self) -> int:
        """Renew (or suspend, retry, release) every due number, one batch in one
        transaction; returns how many numbers were looked at."""
        now = now_us()
        async with self.db.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SQL_CLAIM_DUE, now, self.settings.number_scheduler_batch_max)
            for row in rows:
                await self._renew(conn, HeldNumber.from_row(row), now)
        return len(rows)

    async def _renew(self, conn: Any, held: HeldNumber, now: int) -> None:
        s = self.settings
        release_at = held.paid_until_us + int(s.number_release_grace_s * US)
        try:
            charge = await debits.number_renewal(
                self.store, held.account_id, held.renewal_id(), held.number, automatic=True
            )
        except InsufficientFunds as refusal:
            if held.status == "suspended" and now >= release_at:
                METRICS.renewals.inc(RELEASED)
                await self._release(conn, held, "renewal unpaid after the grace period", now)
            else:
                METRICS.renewals.inc(FAILED)
                await self._suspend(conn, held, refusal, now, release_at)
            return
        except UnknownNumber:
            # The live store no longer holds it (released while this ran, or a
            # release whose transaction did not commit): record it.
            METRICS.renewals.inc(RELEASED)
            await inventory.mark_released(conn, held, "no longer held", now)
            return
        except Exception as exc:  # Redis trouble, ledger backlog: try again later
            METRICS.renewals.inc(ERROR)
            log.warning("renewal of %s %s: %s", held.account_id, held.number, exc)
            retry = min(s.number_retry_schedule()[0], 60.0)
            await conn.execute(
                inventory.SQL_RETRY_LATER, held.account_id, held.number, now + int(retry * US)
            )
            return
        paid = await inventory.record_period_paid(
            conn,
            held.account_id,
            held.number,
            held.renewal_id(),
            held.periods_paid,
            "automatic",
            charge.charged_micros,
            now,
        )
        if paid is not None:
            METRICS.renewals.inc(RENEWED)
            await self._renewed_event(
                conn,
                held,
                charge.charged_micros,
                paid[1],
                "automatic",
                reactivated=held.status == "suspended",
            )

    async def _renewed_event(
        self,
        conn: Any,
        held: HeldNumber,
        charged: int,
        paid_until: int,
        source: str,
        reactivated: bool = False,
    ) -> None:
        await record_event(
            conn,
            AccountEvent(
                held.event_id("number.renewed", held.periods_paid),
                "number.renewed",
                held.account_id,
                now_us(),
                {
                    "number": held.number,
                    "period": held.periods_paid,
                    "charged_micros": charged,
                    "paid_until_us": paid_until,
                    "renewed_by": source,
                    "reactivated": reactivated,
                },
            ),
        )

    async def _suspend(
        self, conn: Any, held: HeldNumber, refusal: InsufficientFunds, now: int, release_at: int
    ) -> None:
        attempt = held.failed_attempts + 1
        schedule = self.settings.number_retry_schedule()
        next_at = now + int(schedule[min(attempt, len(schedule)) - 1] * US)
        if now < release_at < next_at:
            next_at = release_at  # the last try is at the end of the grace
        await phone_numbers.change_status(
            self.store, held.account_id, held.number, "suspend", phone_numbers.ACTIVE
        )
        await conn.execute(
            inventory.SQL_SUSPENDED, held.account_id, held.number, attempt, next_at, now
        )
        await record_event(
            conn,
            AccountEvent(
                held.event_id("number.renewal_failed", held.periods_paid, attempt),
                "number.renewal_failed",
                held.account_id,
                now,
                {
                    "number": held.number,
                    "period": held.periods_paid,
                    "attempt": attempt,
                    "cost_micros": refusal.details.get("cost_micros"),
                    "available_micros": refusal.details.get("available_micros"),
                    "suspended": True,
                    "next_attempt_at_us": next_at,
                    "release_at_us": release_at,
                },
            ),
        )
        log.info("number %s of %s suspended (attempt %d)", held.number, held.account_id, attempt)

    async def _release(self, conn: Any, held: HeldNumber, reason: str, now: int) -> None:
        changed, current = await phone_numbers.change_status(
            self.store, held.account_id, held.number, "release", phone_numbers.SUSPENDED
        )
        if not changed and current == phone_numbers.ACTIVE:
            # The switch renewed or bought it again meanwhile: its entry is on the way.
            await conn.execute(
                inventory.SQL_RETRY_LATER,
                held.account_id,
                held.number,
                now + int(self.settings.number_scheduler_poll_interval_s * US),
            )
            return
        await inventory.mark_released(conn, held, reason, now)
        log.info("number %s of %s released: %s", held.number, held.account_id, reason)

    # ---- the loop -------------------------------------------------------------

    async def step(self) -> int:
        return await self.record_stream() + await self.renew_due()

    async def run(self, stop: asyncio.Event) -> None:
        await self.reader.ensure_groups()
        await poll(stop, self.step, self.settings.number_scheduler_poll_interval_s, "scheduler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer", default=None, help="consumer name in the group (default: host-pid)"
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the scheduler until SIGTERM or SIGINT."""
    store = await open_store(settings)
    db = await create_pool(settings)
    scheduler = NumberScheduler(store, db, settings)
    if args.consumer:
        scheduler.consumer = scheduler.reader.consumer = args.consumer
    stop = stop_on_signals()
    log.info("number scheduler %s started", scheduler.consumer)
    try:
        await scheduler.run(stop)
    finally:
        await db.close()
        await store.redis.aclose()
    return 0
