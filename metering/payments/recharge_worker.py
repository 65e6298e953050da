"""The recharge worker: `python -m metering recharge-worker`.

Each round it takes new recharge requests into episodes (recharge_intake.py),
attempts the episodes that are due, and now and then runs the bounded repair
(recharge_repair.py). An episode is a Postgres row, the durable queue; at most
one is open per account. Due episodes are claimed with a lease (several workers
may run; a worker that dies mid-attempt leaves its episode to the next one when
the lease ends) and attempted:

- a charge already recorded for the episode (a worker died after charging) is
  credited, or its credit answered again: nothing is charged twice;
- the card and the settings are read from Postgres, the durable copy: recharge
  turned off, the card gone or the balance back above the threshold end the
  episode without a charge; an amount above `recharge_micros_max` or not above
  the threshold (settings saved under older rules) is refused, the failure
  recorded and emailed, and automatic recharge turned off;
- success: the card on file is charged off-session (idempotency key from the
  episode) and the charge credited once (charges.py), which clears the pending
  mark in the same script;
- the request is recorded on the episode before it is sent (`charge_sent`) and
  forgotten once Stripe's final answer is recorded: after a crash, a lost answer
  or a 5xx, the next attempt sends that same request again before looking at
  anything else, so a charge Stripe made is never taken for one not needed;
- network trouble, Stripe 5xx or rate limit: the same call (same key) again
  after an exponential backoff, recharge_transient_retries_max times;
- a declined card, no card, or transport retries exhausted: the attempt is
  recorded with its reason, `recharge_last_failure` set, the failure address
  emailed once for the episode, and the next attempt waits
  recharge_decline_retry_s (a new card makes it due at once); after
  recharge_attempts_max attempts the episode ends and the mark is cleared.

Every attempt is a row of recharge_attempts. The pending mark stays set while
an episode is open, so debits meanwhile ask for nothing more. Every change of
the recharge state is published to open pages.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import orjson
import stripe
from redis.exceptions import ResponseError

from metering import crash_points
from metering.account_state import publish_account_state
from metering.events import emit_event, event_id
from metering.ledger.database import DATABASE_DOWN
from metering.ledger.recovery import open_money_store
from metering.metrics import METRICS
from metering.outages import REDIS_DOWN, Outage, pause
from metering.payments import recharge_settings
from metering.payments.charges import (
    AUTOMATIC_RECHARGE,
    Charge,
    credit_charge,
    recharge_payment_id,
)
from metering.payments.decline_words import failure_words
from metering.payments.notifications import (
    recharge_failure_message,
    recharge_receipt_message,
    send_email,
)
from metering.payments.receipts import attempt_reference, card_words, cards_of, receipt_url
from metering.payments.recharge_intake import RechargeIntake
from metering.payments.recharge_marks import clear_pending_mark
from metering.payments.recharge_repair import RechargeRepair
from metering.payments.stripe_client import (
    ChargeOutcome,
    build_stripe_client,
    close_stripe_client,
    idempotency_key,
    off_session_charge,
    send_charge,
    to_cents,
)
from metering.polling import stop_on_signals
from metering.settings import Settings
from metering.store import Store

log = logging.getLogger(__name__)

# Claim due episodes with a lease: a worker that dies mid-attempt leaves the
# episode to be retried (with the same idempotency key) when the lease ends.
SQL_CLAIM_DUE = """
    UPDATE recharge_episodes e SET next_attempt_at_us = $2, updated_at = now()
    FROM (SELECT account_id, episode_us FROM recharge_episodes
          WHERE status = 'open' AND next_attempt_at_us <= $1
          ORDER BY next_attempt_at_us LIMIT $3 FOR UPDATE SKIP LOCKED) due
    WHERE e.account_id = due.account_id AND e.episode_us = due.episode_us
    RETURNING e.account_id, e.episode_us, e.amount_micros, e.attempts, e.declines,
        e.transient_failures, e.charge_sent"""
SQL_RECORD_ATTEMPT = """
    INSERT INTO recharge_attempts (account_id, episode_us, attempt, amount_micros, outcome,
        retryable, reason, payment_intent_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""
SQL_UPDATE_EPISODE = """
    UPDATE recharge_episodes SET status = $3, attempts = $4, declines = $5,
        transient_failures = $6, next_attempt_at_us = $7, last_reason = $8, updated_at = now()
    WHERE account_id = $1 AND episode_us = $2"""
SQL_CHARGE_SENT = """
    UPDATE recharge_episodes SET charge_sent = $3::json, updated_at = now()
    WHERE account_id = $1 AND episode_us = $2"""
SQL_CHARGE_ANSWERED = """
    UPDATE recharge_episodes SET charge_sent = NULL
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
SQL_EPISODE_CHARGE = """
    SELECT payment_intent_id FROM payments
    WHERE account_id = $1 AND payment_id = $2 AND status = 'succeeded'"""
# What an attempt needs, from the durable copy (Redis may lag it: settings_sync.py).
SQL_RECHARGE_STATE = """
    SELECT r.enabled, r.threshold_micros, r.failure_email, c.payment_method_id, s.customer_id
    FROM recharge_settings r
    LEFT JOIN cards_on_file c USING (account_id)
    LEFT JOIN stripe_customers s USING (account_id)
    WHERE r.account_id = $1"""

Mailer = Callable[[Settings, EmailMessage], Awaitable[None]]


def attempt_outcome(outcome: ChargeOutcome) -> str:
    """metering_recharge_attempts_total's outcome: succeeded, retrying (network,
    Stripe 5xx, rate limit) or declined (the card, or no card)."""
    if outcome.succeeded:
        return "succeeded"
    return "retrying" if outcome.retryable else "declined"


def now_us() -> int:
    return time.time_ns() // 1_000


def default_consumer() -> str:
    """Stable across restarts on one host, so a restarted worker re-reads its own
    pending requests (a worker that never comes back is claimed from)."""
    return f"recharge-{socket.gethostname()}"


@dataclasses.dataclass(frozen=True, slots=True)
class Episode:
    account_id: str
    episode_us: int
    amount_micros: int
    attempts: int
    declines: int
    transient_failures: int
    # The charge sent to Stripe whose answer is not recorded: {"request", "key"}.
    charge_sent: dict[str, Any] | None = None


async def settle_recharge_event(store: Store, db: Any, intent: dict[str, Any]) -> str:
    """A payment_intent.succeeded webhook for an automatic recharge."""
    meta = intent.get("metadata") or {}
    account_id, episode = meta.get("account_id"), str(meta.get("episode_us", ""))
    if not account_id or not episode.isdigit():
        return "unknown_payment"
    amount = await db.fetchval(SQL_EPISODE_AMOUNT, account_id, int(episode))
    if amount is None:
        return "unknown_payment"
    if to_cents(amount) != int(intent.get("amount") or 0):
        log.error("webhook amount differs for recharge episode %s/%s", account_id, episode)
        return "amount_mismatch"
    charge = Charge(
        account_id, recharge_payment_id(int(episode)), AUTOMATIC_RECHARGE, amount, intent["id"]
    )
    credit = await credit_charge(store, db, charge)
    return "already_credited" if credit.replayed else "credited"


@dataclasses.dataclass(slots=True)
class RechargeWorker:
    store: Store
    db: Any  # asyncpg pool
    stripe: stripe.StripeClient
    settings: Settings
    consumer: str = dataclasses.field(default_factory=default_consumer)
    mailer: Mailer = send_email
    intake: RechargeIntake = dataclasses.field(init=False)
    repair: RechargeRepair = dataclasses.field(init=False)
    _last_repair: float = 0.0

    def __post_init__(self) -> None:
        self.intake = RechargeIntake(self.store, self.db, self.consumer)
        self.repair = RechargeRepair(self.store, self.db)

    async def ensure_groups(self) -> None:
        """Create the consumer group on every shard's recharge stream (idempotent)."""
        await self.intake.ensure_groups()

    async def read_requests(self) -> int:
        """Move recharge requests from the shard streams into episodes; returns how many."""
        return await self.intake.step()

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
                orjson.loads(row["charge_sent"]) if row["charge_sent"] else None,
            )
            try:
                await self.attempt(episode)
            except Exception:
                # The lease brings it back; one bad episode must not stop the others.
                log.exception("recharge attempt for %s failed unexpectedly", episode.account_id)
        return len(rows)

    async def step(self) -> int:
        """One round: read requests, attempt what is due, repair when it is time.
        Returns work done."""
        done = await self.read_requests() + await self.attempt_due()
        if time.monotonic() - self._last_repair >= self.settings.recharge_repair_interval_s:
            self._last_repair = time.monotonic()
            done += await self.repair.step()
        return done

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
        payment_id = recharge_payment_id(ep.episode_us)
        charged = await self.db.fetchval(SQL_EPISODE_CHARGE, ep.account_id, payment_id)
        if charged is not None:
            # A worker died between the charge and the credit: finish the credit.
            await self._credit(ep, charged)
            return ChargeOutcome(True, charged, "", False)
        if ep.charge_sent is not None:
            # A charge went to Stripe and its answer was never recorded: Stripe may
            # have made it, so ask about that same charge whatever changed since.
            state = await self.db.fetchrow(SQL_RECHARGE_STATE, ep.account_id)
            email = (state["failure_email"] if state else None) or ""
            outcome = await send_charge(
                self.stripe, ep.charge_sent["request"], ep.charge_sent["key"]
            )
        else:
            ready = await self._ready(ep)
            if ready is None:
                return None
            state, email = ready
            if state["payment_method_id"] is None or state["customer_id"] is None:
                outcome = ChargeOutcome(False, None, "no card on file", False)
            else:
                request = off_session_charge(
                    self.settings,
                    state["customer_id"],
                    state["payment_method_id"],
                    ep.amount_micros,
                    {
                        "account_id": ep.account_id,
                        "episode_us": str(ep.episode_us),
                        "kind": AUTOMATIC_RECHARGE,
                    },
                )
                # A decline changes the key (the next attempt is a new charge); a
                # network retry keeps it (Stripe answers the first charge again).
                key = idempotency_key("recharge", ep.account_id, ep.episode_us, ep.declines)
                await self.db.execute(
                    SQL_CHARGE_SENT,
                    ep.account_id,
                    ep.episode_us,
                    orjson.dumps({"request": request, "key": key}).decode(),
                )
                outcome = await send_charge(self.stripe, request, key)
        if outcome.succeeded:
            crash_points.reached(self.settings, crash_points.CHARGED)
        attempt_no = ep.attempts + 1
        await self._record_attempt(ep, attempt_no, outcome)
        METRICS.recharge_attempts.inc((attempt_outcome(outcome),))
        if outcome.succeeded:
            assert outcome.payment_intent_id is not None
            await self._credit(ep, outcome.payment_intent_id)
            log.info("recharged %s with %d micros", ep.account_id, ep.amount_micros)
            await self._email_receipt(ep, email, outcome.payment_intent_id)
            return outcome
        await self._failed(ep, attempt_no, outcome, email)
        return outcome

    async def _ready(self, ep: Episode) -> tuple[Any, str] | None:
        """The recharge state and failure address when the episode is still to be
        charged; else end or refuse it and return None."""
        keys = self.store.account_keys(ep.account_id)
        pending, balance, reserved = await self.store.redis.hmget(
            keys.account, "recharge_pending_since_us", "balance", "reserved"
        )
        if pending != str(ep.episode_us):
            await self.db.execute(
                SQL_END_EPISODE, ep.account_id, ep.episode_us, "ended", "no longer pending"
            )
            return None
        state = await self.db.fetchrow(SQL_RECHARGE_STATE, ep.account_id)
        if state is None or not state["enabled"]:
            await self._end(ep, "recharge turned off")
            return None
        if int(balance) - int(reserved) >= state["threshold_micros"]:
            await self._end(ep, "balance back above the threshold")
            return None
        email = state["failure_email"] or ""
        refusal = recharge_settings.amount_refusal(
            ep.amount_micros, state["threshold_micros"], self.settings.recharge_micros_max
        )
        if refusal:
            await self._refuse(ep, refusal, email)
            return None
        return state, email

    async def _credit(self, ep: Episode, payment_intent_id: str) -> None:
        charge = Charge(
            ep.account_id,
            recharge_payment_id(ep.episode_us),
            AUTOMATIC_RECHARGE,
            ep.amount_micros,
            payment_intent_id,
        )
        await credit_charge(self.store, self.db, charge)

    async def _record_attempt(self, ep: Episode, attempt_no: int, outcome: ChargeOutcome) -> None:
        """Record the attempt; a final answer (charged or declined, not a retryable
        failure) also forgets the charge sent, in the same transaction."""
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
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
            if not outcome.retryable:
                await conn.execute(SQL_CHARGE_ANSWERED, ep.account_id, ep.episode_us)

    async def _refuse(self, ep: Episode, reason: str, email: str) -> None:
        """Settings this worker must not charge: record it, turn recharge off (so
        no later debit asks again), end the episode, tell the customer."""
        reason = f"Not charged: {reason}. Automatic recharge was turned off; save new settings."
        outcome = ChargeOutcome(False, None, reason, False)
        attempt_no = ep.attempts + 1
        await self._record_attempt(ep, attempt_no, outcome)
        METRICS.recharge_attempts.inc(("refused",))
        await recharge_settings.turn_off(self.store, self.db, ep.account_id)
        await self.db.execute(SQL_END_EPISODE, ep.account_id, ep.episode_us, "ended", reason)
        await self.store.redis.hset(
            self.store.account_keys(ep.account_id).account,
            mapping={"recharge_last_failure": reason, "recharge_last_failure_at_us": now_us()},
        )
        await self._settle(ep, reason)
        log.warning("recharge of %s refused: %s", ep.account_id, reason)
        next_attempt = "none (automatic recharge is off)"
        await self._failure_event(ep, attempt_no, reason, next_attempt)
        await self._email_once(ep, email, reason, next_attempt, attempt_no)

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
        await self._failure_event(ep, attempt_no, outcome.reason, next_attempt)
        await self._email_once(ep, email, outcome.reason, next_attempt, attempt_no)

    async def _failure_event(
        self, ep: Episode, attempt_no: int, reason: str, next_attempt: str
    ) -> None:
        await emit_event(
            self.store,
            ep.account_id,
            "recharge.failed",
            event_id("recharge.failed", ep.account_id, ep.episode_us, attempt_no),
            {
                "amount_micros": ep.amount_micros,
                "reason": reason,
                "attempt": attempt_no,
                "next_attempt": next_attempt,
            },
        )

    async def _email_once(
        self, ep: Episode, email: str, reason: str, next_attempt: str, attempt_no: int
    ) -> None:
        if not email or not await self.db.fetchval(SQL_CLAIM_EMAIL, ep.account_id, ep.episode_us):
            return
        # The attempt's record opens from the email without a token.
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
            METRICS.emails.inc(("recharge.failed", "failed"))
            log.warning("could not email %s about %s: %s", email, ep.account_id, exc)
            await self.db.execute(SQL_UNCLAIM_EMAIL, ep.account_id, ep.episode_us)
            return
        METRICS.emails.inc(("recharge.failed", "sent"))

    async def _email_receipt(self, ep: Episode, email: str, payment_intent_id: str) -> None:
        """The receipt of a recharge, emailed once per episode (best effort: the
        receipt itself stays on the billing page)."""
        if not email or not await self.db.fetchval(
            SQL_CLAIM_RECEIPT_EMAIL, ep.account_id, ep.episode_us
        ):
            return
        cards = await cards_of(self.db, self.stripe, [payment_intent_id])
        link = receipt_url(
            self.settings, ep.account_id, payment_id=recharge_payment_id(ep.episode_us)
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
            METRICS.emails.inc(("recharge.receipt", "failed"))
            log.warning("could not email the receipt of %s to %s: %s", ep.account_id, email, exc)
            return
        METRICS.emails.inc(("recharge.receipt", "sent"))

    async def _end(self, ep: Episode, why: str) -> None:
        # Postgres first: a crash before the mark is cleared leaves an ended
        # episode under a set mark, which the repair clears.
        await self.db.execute(SQL_END_EPISODE, ep.account_id, ep.episode_us, "ended", why)
        await self._settle(ep, "")

    async def _settle(self, ep: Episode, failure_text: str) -> None:
        await clear_pending_mark(self.store, ep.account_id, ep.episode_us, failure_text)
        await publish_account_state(self.store, ep.account_id)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer",
        default=None,
        help="consumer name in the group (default recharge-<host>, stable so a restarted "
        "worker re-reads its own pending requests)",
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the worker until SIGTERM or SIGINT."""
    stop = stop_on_signals()
    # Credits move money: none in a restarted Redis before the ledger check.
    opened = await open_money_store(settings, "recharge worker", stop)
    if opened is None:
        return 0
    store, db = opened
    client = build_stripe_client(settings)
    worker = RechargeWorker(
        store, db, client, settings, consumer=args.consumer or default_consumer()
    )
    log.info("recharge worker %s started", worker.consumer)
    try:
        await worker.run(stop)
    finally:
        await close_stripe_client(client)
        await db.close()
        await store.redis.aclose()
    return 0


# The ops view of the queue: open episodes, those due now, the oldest due one.
SQL_BACKLOG = """
    SELECT count(*) AS open,
        count(*) FILTER (WHERE next_attempt_at_us <= $1) AS due,
        min(next_attempt_at_us) FILTER (WHERE next_attempt_at_us <= $1) AS oldest_due_us
    FROM recharge_episodes WHERE status = 'open'"""


async def recharge_backlog(db: Any, at_us: int) -> dict[str, Any]:
    """Open recharge episodes, how many are due, and how long the oldest due one
    has waited (a growing figure: no worker is attempting them)."""
    row = await db.fetchrow(SQL_BACKLOG, at_us)
    oldest = row["oldest_due_us"]
    return {
        "open_episodes": int(row["open"]),
        "due_episodes": int(row["due"]),
        "oldest_due_age_s": round((at_us - oldest) / 1e6, 3) if oldest is not None else None,
    }
