"""The notifier: `python -m metering notifier` (several may run).

- Records each entry of the shard streams `m:{sNNN}:events` (low balance from
  the scripts, payments from metering/payments/) into account_events, once per
  event id, with one webhook delivery per registered endpoint; acknowledged in
  Redis after the commit.
- Emails the events that send one (outbox.AccountEvent.sends_email) to the
  account's alert email, else its recharge failure email. Emails are claimed
  with a lease and retried notifier_email_retry_s later if SMTP fails.
- Delivers webhooks: at most webhook_concurrency_max in flight and one per
  endpoint at a time, each POST bounded by webhook_timeout_s, so a slow or
  failing endpoint holds one slot and never the others. Each attempt is
  recorded (status code, error); a failure is retried with doubling backoff until
  webhook_retry_window_s after the event. A success is recorded once per event
  and endpoint (the lease token must still be the attempt's).
Nothing here is on the authorize path: the scripts only XADD.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import httpx
import orjson

from metering import phone_numbers
from metering.ledger.database import create_pool
from metering.metrics import METRICS
from metering.notify import webhooks
from metering.notify.emails import event_message
from metering.notify.outbox import AccountEvent, record_event
from metering.payments.notifications import send_email
from metering.polling import poll, stop_on_signals
from metering.settings import Settings
from metering.shard_streams import Entry, ShardStreamReader
from metering.store import Store, open_store

log = logging.getLogger(__name__)

Mailer = Callable[[Settings, EmailMessage], Awaitable[None]]

SQL_CLAIM_EMAILS = """
UPDATE account_events e SET email_next_at_us = $2, email_attempts = e.email_attempts + 1
FROM (SELECT event_id FROM account_events
      WHERE email_status = 'pending' AND email_next_at_us <= $1
      ORDER BY email_next_at_us LIMIT $3 FOR UPDATE SKIP LOCKED) due
WHERE e.event_id = due.event_id
RETURNING e.event_id, e.type, e.account_id, e.at_us, e.data, e.email_attempts"""
SQL_EMAIL_DONE = """
UPDATE account_events SET email_status = $2, email_error = $3 WHERE event_id = $1"""
SQL_EMAIL_RETRY = """
UPDATE account_events SET email_next_at_us = $2, email_error = $3 WHERE event_id = $1"""


def now_us() -> int:
    return time.time_ns() // 1_000


@dataclasses.dataclass(slots=True)
class Notifier:
    store: Store
    db: Any  # asyncpg pool
    settings: Settings
    http: httpx.AsyncClient
    consumer: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    mailer: Mailer = send_email
    reader: ShardStreamReader = dataclasses.field(init=False)
    in_flight: dict[str, asyncio.Task[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reader = ShardStreamReader(
            self.store,
            lambda shard: shard.events,
            self.settings.notifier_consumer_group,
            self.consumer,
        )

    async def record_stream(self) -> int:
        """Record new events (once each, by id); returns how many entries were read."""
        entries = await self.reader.read(self.settings.notifier_batch_max)
        if not entries:
            return 0
        done: list[Entry] = []
        async with self.db.acquire() as conn, conn.transaction():
            for entry in entries:
                try:
                    event = AccountEvent.from_stream(entry[2])
                except (KeyError, ValueError, orjson.JSONDecodeError):
                    log.error("dropping a malformed event entry %s: %r", entry[1], entry[2])
                else:
                    await record_event(conn, event)
                done.append(entry)
        await self.reader.done(done)
        return len(entries)

    async def send_emails(self) -> int:
        """Send the due emails; returns how many were attempted."""
        s = self.settings
        now = now_us()
        lease_us = int((2 * s.smtp_timeout_s + 5) * 1_000_000)
        rows = await self.db.fetch(SQL_CLAIM_EMAILS, now, now + lease_us, s.notifier_batch_max)
        for row in rows:
            event = AccountEvent(
                row["event_id"],
                row["type"],
                row["account_id"],
                row["at_us"],
                orjson.loads(row["data"]),
            )
            await self._email(event, row["email_attempts"])
        return len(rows)

    async def _email(self, event: AccountEvent, attempts: int) -> None:
        key = self.store.account_keys(event.account_id).account
        alert_email, recharge_email = await self.store.redis.hmget(
            key, "alert_email", "recharge_failure_email"
        )
        to = alert_email or recharge_email
        if not to:
            await self.db.execute(SQL_EMAIL_DONE, event.event_id, "none", "no email address")
            return
        numbers = await phone_numbers.held_numbers(self.store, event.account_id)
        try:
            await self.mailer(self.settings, event_message(self.settings, to, event, numbers))
        except Exception as exc:  # SMTP down or refusing: again later, a bounded number of times
            METRICS.emails.inc((event.type, "failed"))
            log.warning("could not email %s about %s: %s", to, event.event_id, exc)
            if attempts >= self.settings.notifier_email_attempts_max:
                await self.db.execute(SQL_EMAIL_DONE, event.event_id, "failed", str(exc)[:300])
            else:
                retry_at = now_us() + int(self.settings.notifier_email_retry_s * 1_000_000)
                await self.db.execute(SQL_EMAIL_RETRY, event.event_id, retry_at, str(exc)[:300])
            return
        METRICS.emails.inc((event.type, "sent"))
        await self.db.execute(SQL_EMAIL_DONE, event.event_id, "sent", None)

    # ---- webhooks -------------------------------------------------------------

    async def start_deliveries(self) -> int:
        """Claim due deliveries for the free slots and start them; returns how many."""
        self.in_flight = {k: t for k, t in self.in_flight.items() if not t.done()}
        free = self.settings.webhook_concurrency_max - len(self.in_flight)
        if free <= 0:
            return 0
        claimed = await webhooks.claim_due(self.db, self.settings, set(self.in_flight), free)
        for delivery in claimed:
            self.in_flight[delivery.webhook_id] = asyncio.create_task(self.deliver(delivery))
        return len(claimed)

    async def deliver(self, delivery: webhooks.Delivery) -> str:
        """POST one event to one endpoint and record the outcome."""
        status_code: int | None = None
        error: str | None = None
        try:
            if delivery.customer_owned and not self.settings.webhook_private_targets:
                await webhooks.check_target(delivery.url, allow_private=False)
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "metering-webhooks/1",
                webhooks.SIGNATURE_HEADER: webhooks.sign(delivery.secret, delivery.body, timestamp),
                "Metering-Event-Id": delivery.event_id,
            }
            async with self.http.stream(
                "POST", delivery.url, content=delivery.body, headers=headers
            ) as response:
                status_code = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a refused target (InvalidRequest) and the unexpected
            error = str(exc) or type(exc).__name__
        sent = status_code is not None and 200 <= status_code < 300 and error is None
        METRICS.webhooks.inc(("sent",) if sent else ("failed",))
        outcome = await webhooks.record_outcome(
            self.db, self.settings, delivery, status_code, error
        )
        host = urllib.parse.urlsplit(delivery.url).hostname
        log.info(
            "webhook %s to %s (%s) attempt %d: %s %s",
            delivery.event_id,
            delivery.webhook_id,
            host,
            delivery.attempt,
            outcome,
            status_code or error,
        )
        return outcome

    # ---- the loops ------------------------------------------------------------

    async def step(self) -> int:
        """One round of events and emails (webhook deliveries run on their own)."""
        return await self.record_stream() + await self.send_emails()

    async def run(self, stop: asyncio.Event) -> None:
        await self.reader.ensure_groups()
        interval_s = self.settings.notifier_poll_interval_s
        deliveries = asyncio.create_task(
            poll(stop, self.start_deliveries, interval_s, "webhook deliveries")
        )
        try:
            await poll(stop, self.step, interval_s, "notifier")
        finally:
            await deliveries
            for task in self.in_flight.values():
                task.cancel()
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """One client for the process: no redirects (a receiver answers for itself),
    every request bounded by webhook_timeout_s."""
    return httpx.AsyncClient(
        timeout=settings.webhook_timeout_s,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=settings.webhook_concurrency_max * 2),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer", default=None, help="consumer name in the group (default: host-pid)"
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the notifier until SIGTERM or SIGINT."""
    store = await open_store(settings)
    db = await create_pool(settings)
    http = webhook_client(settings)
    notifier = Notifier(store, db, settings, http)
    if args.consumer:
        notifier.consumer = notifier.reader.consumer = args.consumer
    stop = stop_on_signals()
    log.info("notifier %s started", notifier.consumer)
    try:
        await notifier.run(stop)
    finally:
        await http.aclose()
        await db.close()
        await store.redis.aclose()
    return 0
