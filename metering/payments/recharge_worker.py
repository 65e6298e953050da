"""The recharge worker: `python -m metering recharge-worker`.

The scripts mark an account's recharge pending once and XADD one request to
its shard's stream `m:{sNNN}:recharge`. The worker reads the shard streams
through a consumer group and turns each request into a recharge *episode*, a
Postgres row (the durable queue, acknowledged in Redis only after it is
written). Due episodes are claimed with a lease (several workers may run) and
attempted:

- success: the card on file is charged off-session (idempotency key from the
  episode), the amount credited once (credit id `recharge:<episode>`, source
  automatic recharge) and the pending mark cleared in the same script;
- network trouble, Stripe 5xx or rate limit: the same call (same key) again
  after an exponential backoff, recharge_transient_retries_max times;
- a declined card, no card, or transport retries exhausted: the attempt is
  recorded with its reason, `recharge_last_failure` set, the failure address
  emailed once for the episode, and the next attempt waits
  recharge_decline_retry_s (a new card makes it due at once); after
  recharge_attempts_max attempts the episode ends and the mark is cleared.

Every attempt is a row of recharge_attempts. The pending mark stays set while
an episode is open, so debits meanwhile ask for nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from email.message import EmailMessage
from typing import Any

import stripe
from redis.exceptions import ResponseError

from metering.account_state import publish_account_state
from metering.credits import add_funds
from metering.errors import raise_refusal
from metering.events import emit_event, event_id
from metering.keys import all_shards
from metering.ledger.database import DATABASE_DOWN, create_pool
from metering.outages import REDIS_DOWN, Outage, pause, until_it_answers
from metering.payments.cards import card_on_file
from metering.payments.decline_words import failure_words
from metering.payments.notifications import (
    recharge_failure_message,
    recharge_receipt_message,
    send_email,
)
from metering.payments.pay_now import credit_reason
from metering.payments.receipts import attempt_reference, card_words, cards_of, receipt_url
from metering.payments.stripe_client import (
    ChargeOutcome,
    build_stripe_client,
    charge_off_session,
    close_stripe_client,
    idempotency_key,
)
from metering.settings import Settings
from metering.store import Store, open_store

log = logging.getLogger(__name__)

SQL_OPEN_EPISODE = """
    INSERT INTO recharge_episodes (account_id, episode_us, amount_micros, status,
        next_attempt_at_us)
    VALUES ($1, $2, $3, 'open', 0) ON CONFLICT (account_id, episode_us) DO NOTHING"""
# Claim due episodes with a lease: a worker that dies mid-attempt leaves the
# episode to be retried (with the same idempotency key) when the lease ends.
SQL_CLAIM_DUE = """
    UPDATE recharge_episodes e SET next_attempt_at_us = $2, updated_at = now()
    FROM (SELECT account_id, episode_us FROM recharge_episodes
          WHERE status = 'open' AND next_attempt_at_us <= $1
          ORDER BY next_attempt_at_us LIMIT $3 FOR UPDATE SKIP LOCKED) due
    WHERE e.account_id = due.account_id AND e.episode_us = due.episode_us
    RETURNING e.account_id, e.episode_us, e.amount_micros, e.attempts, e.declines,
        e.transient_failures"""
SQL_RECORD_ATTEMPT = """
    INSERT INTO recharge_attempts (account_id, episode_us, attempt, amount_micros, outcome,
        retryable, reason, payment_intent_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""
SQL_UPDATE_EPISODE = """
    UPDATE recharge_episodes SET status = $3, attempts = $4, declines = $5,
        transient_failures = $6, next_attempt_at_us = $7, last_reason = $8, updated_at = now()
    WHERE account_id = $1 AND episode_us = $2"""
SQL_END_EPISODE = """
    UPDATE recharge_episodes SET status = $3, last_reason = $4, updated_at = now()
    WHERE account_id = $1 AND episode_us = $2 AND status = 'open'"""
SQL_CLAIM_EMAIL = """
    UPDATE recharge_episodes SET emailed_at = now()
    WHERE account_id = $1 AND episode_us = $2 AND emailed_at IS NULL RETURNING episode_us"""
SQL_CLAIM_RECEIPT_EMAIL = """
    UPDATE recharge_episodes SET receipt_emailed_at = now()
    WHERE account_id = $1 AND episode_us = $2 AND receipt_emailed_at IS NULL
    RETURNING episode_us"""
SQL_UNCLAIM_EMAIL = """
    UPDATE recharge_episodes SET emailed_at = NULL WHERE account_id = $1 AND episode_us = $2"""
SQL_EPISODE_AMOUNT = """
    SELECT amount_micros FROM recharge_episodes WHERE account_id = $1 AND episode_us = $2"""
SQL_RECORD_PAYMENT = """
    INSERT INTO payments (account_id, payment_id, kind, amount_micros, status,
        payment_intent_id, credited)
    VALUES ($1, $2, 'automatic_recharge', $3, 'succeeded', $4, true)
    ON CONFLICT (account_id, payment_id) DO UPDATE SET status = 'succeeded', credited = true,
        payment_intent_id = $4, updated_at = now()"""

# What the account hash says about the last failed automatic recharge.
LAST_FAILURE_FIELDS = (
    "recharge_last_failure",
    "recharge_last_failure_at_us",
    "recharge_next_attempt_at_us",
)

Mailer = Callable[[Settings, EmailMessage], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class RechargeRequest:
    """One request of a shard's recharge stream `m:{sNNN}:recharge`: one XADD
    (lua/_lib.lua) when a change takes the available balance below the threshold
    while no recharge is pending."""

    account_id: str
    amount_micros: int
    available_micros: int
    threshold_micros: int
    at_us: int

    @classmethod
    def from_stream(cls, fields: Mapping[str, str]) -> RechargeRequest:
        return cls(
            account_id=fields["account_id"],
            amount_micros=int(fields["amount_micros"]),
            available_micros=int(fields["available_micros"]),
            threshold_micros=int(fields["threshold_micros"]),
            at_us=int(fields["at_us"]),
        )


def now_us() -> int:
    return time.time_ns() // 1_000


def recharge_credit_id(episode_us: int) -> str:
    """The credit (and payment) id of an episode's recharge: one credit per episode."""
    return f"recharge:{episode_us}"


@dataclasses.dataclass(frozen=True, slots=True)
class Episode:
    account_id: str
    episode_us: int
    amount_micros: int
    attempts: int
    declines: int
    transient_failures: int


async def credit_recharge(
    store: Store,
    db: Any,
    account_id: str,
    episode_us: int,
    amount_micros: int,
    payment_intent_id: str,
) -> None:
    """Credit a succeeded recharge once and clear the pending mark (worker and webhook)."""
    credit_id = recharge_credit_id(episode_us)
    await add_funds(
        store,
        account_id,
        credit_id,
        amount_micros,
        "automatic_recharge",
        credit_reason(payment_intent_id),
        settles_recharge=True,
    )
    await store.redis.hdel(store.account_keys(account_id).account, *LAST_FAILURE_FIELDS)
    await publish_account_state(store, account_id)
    # db is a pool or, from a webhook, the connection holding its transaction.
    await db.execute(SQL_RECORD_PAYMENT, account_id, credit_id, amount_micros, payment_intent_id)
    await db.execute(SQL_END_EPISODE, account_id, episode_us, "succeeded", None)
    await emit_event(
        store,
        account_id,
        "recharge.succeeded",
        event_id("recharge.succeeded", account_id, episode_us),
        {"amount_micros": amount_micros, "payment_intent_id": payment_intent_id},
    )


async def settle_recharge_event(store: Store, db: Any, intent: dict[str, Any]) -> str:
    """A payment_intent.succeeded webhook for an automatic recharge."""
    meta = intent.get("metadata") or {}
    account_id, episode = meta.get("account_id"), meta.get("episode_us", "")
    if not account_id or not str(episode).isdigit():
        return "unknown_payment"
    amount = await db.fetchval(SQL_EPISODE_AMOUNT, account_id, int(episode))
    if amount is None:
        return "unknown_payment"
    await credit_recharge(store, db, account_id, int(episode), amount, intent["id"])
    return "credited"


async def clear_pending_mark(
    store: Store, account_id: str, episode_us: int, failure_text: str = ""
) -> bool:
    """End an episode without a credit: clear the pending mark if it is still this
    episode's (settle_recharge.lua), keeping failure_text as the last failure."""
    keys = store.account_keys(account_id)
    result = await store.scripts["settle_recharge"](
        store.redis, [keys.account], [episode_us, failure_text]
    )
    raise_refusal(result, account_id)
    await publish_account_state(store, account_id)
    return bool(result[1] == 1)


@dataclasses.dataclass(slots=True)
class RechargeWorker:
    store: Store
    db: Any  # asyncpg pool
    stripe: stripe.StripeClient
    settings: Settings
    consumer: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    mailer: Mailer = send_email
    _pending_first: bool = True

    async def ensure_groups(self) -> None:
        """Create the consumer group on every shard's recharge stream (idempotent)."""
        for shard in all_shards(self.settings.shard_count):
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self.store.redis.xgroup_create(
                    shard.recharge, self.settings.recharge_consumer_group, id="0", mkstream=True
                )

    async def read_requests(self) -> int:
        """Move new recharge requests from the shard streams into episodes; returns how many."""
        # The first pass re-reads what this consumer took but never acknowledged.
        start = "0" if self._pending_first else ">"
        self._pending_first = False
        group = self.settings.recharge_consumer_group
        shards = all_shards(self.settings.shard_count)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.xreadgroup(
                    group,
                    self.consumer,
                    {shard.recharge: start},
                    count=self.settings.recharge_batch_max,
                )
            answers = await pipe.execute()
        moved = 0
        for shard, answer in zip(shards, answers, strict=True):
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    if fields:
                        req = RechargeRequest.from_stream(fields)
                        await self.db.execute(
                            SQL_OPEN_EPISODE, req.account_id, req.at_us, req.amount_micros
                        )
                        moved += 1
                    await self.store.redis.xack(shard.recharge, group, entry_id)
                    await self.store.redis.xdel(shard.recharge, entry_id)
        return moved

    async def attempt_due(self) -> int:
        """Attempt every due episode (bounded per step); returns how many were attempted."""
        now = now_us()
        lease_us = int(self.settings.recharge_lease_s * 1_000_000)
        rows = await self.db.fetch(
            SQL_CLAIM_DUE, now, now + lease_us, self.settings.recharge_batch_max
        )
        for row in rows:
            episode = Episode(
                row["account_id"],
                row["episode_us"],
                row["amount_micros"],
                row["attempts"],
                row["declines"],
                row["transient_failures"],
            )
            try:
                await self.attempt(episode)
            except Exception:
                # The lease brings it back; one bad episode must not stop the others.
                log.exception("recharge attempt for %s failed unexpectedly", episode.account_id)
        return len(rows)

    async def step(self) -> int:
        """One round: read requests, attempt what is due. Returns work done."""
        return await self.read_requests() + await self.attempt_due()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until stop is set. A Redis or Postgres restart is waited out with
        bounded backoff (metering/outages.py); a Redis that lost its consumer
        groups gets them back; other errors are logged and the next round retries."""
        outage = Outage(
            f"recharge worker {self.consumer}",
            log,
            self.settings.outage_backoff_max_s,
            self.store.redis,
        )
        groups_ready = False
        while not stop.is_set():
            done = 0
            try:
                if not groups_ready:
                    await self.ensure_groups()
                    groups_ready = True
                done = await self.step()
            except (*REDIS_DOWN, *DATABASE_DOWN) as exc:
                await outage.wait(exc, stop)
                continue
            except ResponseError as exc:
                groups_ready = "NOGROUP" not in str(exc)
                log.exception("recharge worker round failed; retrying")
            except Exception:
                log.exception("recharge worker round failed; retrying")
            else:
                outage.ended()
            if not done:
                await pause(stop, self.settings.recharge_poll_interval_s)

    async def attempt(self, ep: Episode) -> ChargeOutcome | None:
        """One attempt of an episode: charge, then credit or record the failure."""
        keys = self.store.account_keys(ep.account_id)
        pending, enabled, threshold, balance, reserved, email = await self.store.redis.hmget(
            keys.account,
            "recharge_pending_since_us",
            "recharge_enabled",
            "recharge_threshold_micros",
            "balance",
            "reserved",
            "recharge_failure_email",
        )
        if pending != str(ep.episode_us):
            await self.db.execute(
                SQL_END_EPISODE, ep.account_id, ep.episode_us, "ended", "no longer pending"
            )
            return None
        if enabled != "1" or int(balance) - int(reserved) >= int(threshold or 0):
            why = "recharge turned off" if enabled != "1" else "balance back above the threshold"
            await self._end(ep, why)
            return None
        card = await card_on_file(self.db, ep.account_id)
        if card is None:
            outcome = ChargeOutcome(False, None, "no card on file", False)
        else:
            outcome = await charge_off_session(
                self.stripe,
                self.settings,
                card.customer_id,
                card.payment_method_id,
                ep.amount_micros,
                {
                    "account_id": ep.account_id,
                    "episode_us": str(ep.episode_us),
                    "kind": "automatic_recharge",
                },
                # A decline changes the key (the next attempt is a new charge); a
                # network retry keeps it (Stripe answers the first charge again).
                idempotency_key("recharge", ep.account_id, ep.episode_us, ep.declines),
            )
        attempt_no = ep.attempts + 1
        await self.db.execute(
            SQL_RECORD_ATTEMPT,
            ep.account_id,
            ep.episode_us,
            attempt_no,
            ep.amount_micros,
            "succeeded" if outcome.succeeded else "failed",
            outcome.retryable,
            outcome.reason,
            outcome.payment_intent_id,
        )
        if outcome.succeeded:
            assert outcome.payment_intent_id is not None
            await credit_recharge(
                self.store,
                self.db,
                ep.account_id,
                ep.episode_us,
                ep.amount_micros,
                outcome.payment_intent_id,
            )
            log.info("recharged %s with %d micros", ep.account_id, ep.amount_micros)
            await self._email_receipt(ep, email or "", outcome.payment_intent_id)
            return outcome
        await self._failed(ep, attempt_no, outcome, email or "")
        return outcome

    async def _failed(
        self, ep: Episode, attempt_no: int, outcome: ChargeOutcome, email: str
    ) -> None:
        s = self.settings
        transient = ep.transient_failures + 1 if outcome.retryable else 0
        if outcome.retryable and transient < s.recharge_transient_retries_max:
            delay_s = min(
                s.recharge_backoff_base_s * 2 ** (transient - 1), s.recharge_backoff_max_s
            )
            await self.db.execute(
                SQL_UPDATE_EPISODE,
                ep.account_id,
                ep.episode_us,
                "open",
                attempt_no,
                ep.declines,
                transient,
                now_us() + int(delay_s * 1_000_000),
                outcome.reason,
            )
            log.warning(
                "recharge of %s: %s; retrying in %.1fs", ep.account_id, outcome.reason, delay_s
            )
            return
        declines = ep.declines + (0 if outcome.retryable else 1)
        # The pages show the failure in the customer's words, with when it
        # happened and when the next attempt is (the code stays in recharge_attempts).
        failure_text = failure_words(outcome.reason)
        failure_fields: dict[str, str | int] = {
            "recharge_last_failure": failure_text,
            "recharge_last_failure_at_us": now_us(),
        }
        if attempt_no >= s.recharge_attempts_max:
            next_attempt = (
                "none (automatic recharge gave up after "
                f"{attempt_no} attempts; it starts again at the next low balance)"
            )
            await self.db.execute(
                SQL_UPDATE_EPISODE,
                ep.account_id,
                ep.episode_us,
                "ended",
                attempt_no,
                declines,
                0,
                0,
                outcome.reason,
            )
            await self.store.redis.hset(
                self.store.account_keys(ep.account_id).account, mapping=failure_fields
            )
            await self._settle(ep, failure_text)
        else:
            next_us = now_us() + int(s.recharge_decline_retry_s * 1_000_000)
            next_attempt = (
                datetime.datetime.fromtimestamp(next_us / 1_000_000, datetime.UTC).isoformat(
                    timespec="seconds"
                )
                + " (or as soon as a new card is registered)"
            )
            await self.db.execute(
                SQL_UPDATE_EPISODE,
                ep.account_id,
                ep.episode_us,
                "open",
                attempt_no,
                declines,
                0,
                next_us,
                outcome.reason,
            )
            failure_fields["recharge_next_attempt_at_us"] = next_us
            await self.store.redis.hset(
                self.store.account_keys(ep.account_id).account, mapping=failure_fields
            )
            await publish_account_state(self.store, ep.account_id)
        log.warning("recharge of %s failed: %s", ep.account_id, outcome.reason)
        await emit_event(
            self.store,
            ep.account_id,
            "recharge.failed",
            event_id("recharge.failed", ep.account_id, ep.episode_us, attempt_no),
            {
                "amount_micros": ep.amount_micros,
                "reason": outcome.reason,
                "attempt": attempt_no,
                "next_attempt": next_attempt,
            },
        )
        await self._email_once(ep, email, outcome.reason, next_attempt, attempt_no)

    async def _email_once(
        self, ep: Episode, email: str, reason: str, next_attempt: str, attempt_no: int
    ) -> None:
        if not email or not await self.db.fetchval(SQL_CLAIM_EMAIL, ep.account_id, ep.episode_us):
            return
        link = receipt_url(
            self.settings, ep.account_id, attempt=attempt_reference(ep.episode_us, attempt_no)
        )
        message = recharge_failure_message(
            self.settings,
            email,
            ep.account_id,
            ep.amount_micros,
            failure_words(reason),
            next_attempt,
            link,
        )
        try:
            await self.mailer(self.settings, message)
        except Exception as exc:  # SMTP down: unclaim, so the next failure sends it
            log.warning("could not email %s about %s: %s", email, ep.account_id, exc)
            await self.db.execute(SQL_UNCLAIM_EMAIL, ep.account_id, ep.episode_us)

    async def _email_receipt(self, ep: Episode, email: str, payment_intent_id: str) -> None:
        """The receipt of a recharge, emailed once per episode (best effort: the
        receipt itself stays on the billing page)."""
        if not email or not await self.db.fetchval(
            SQL_CLAIM_RECEIPT_EMAIL, ep.account_id, ep.episode_us
        ):
            return
        cards = await cards_of(self.db, self.stripe, [payment_intent_id])
        link = receipt_url(
            self.settings, ep.account_id, payment_id=recharge_credit_id(ep.episode_us)
        )
        message = recharge_receipt_message(
            self.settings,
            email,
            ep.account_id,
            ep.amount_micros,
            card_words(cards.get(payment_intent_id)),
            link,
        )
        try:
            await self.mailer(self.settings, message)
        except Exception as exc:
            log.warning("could not email the receipt of %s to %s: %s", ep.account_id, email, exc)

    async def _end(self, ep: Episode, why: str) -> None:
        await self._settle(ep, "")
        await self.db.execute(SQL_END_EPISODE, ep.account_id, ep.episode_us, "ended", why)

    async def _settle(self, ep: Episode, failure_text: str) -> None:
        await clear_pending_mark(self.store, ep.account_id, ep.episode_us, failure_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer", default=None, help="consumer name in the group (default: host-pid)"
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the worker until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Started while Redis restarts: wait for it rather than exit.
    starting = Outage("recharge worker", log, settings.outage_backoff_max_s)
    store = await until_it_answers(starting, stop, lambda: open_store(settings))
    if store is None:
        return 0
    db = await create_pool(settings)
    client = build_stripe_client(settings)
    worker = RechargeWorker(store, db, client, settings)
    if args.consumer:
        worker.consumer = args.consumer
    log.info("recharge worker %s started", worker.consumer)
    try:
        await worker.run(stop)
    finally:
        await close_stripe_client(client)
        await db.close()
        await store.redis.aclose()
    return 0
