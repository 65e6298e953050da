"""Crediting the money of a Stripe charge: once per charge, forever.

Three paths can learn that a card was charged: the pay-now request (Stripe's
answer), the `payment_intent.succeeded` webhook, and the recharge worker (its
answer). Whichever comes first, in whatever order, after however long, all of
them call `credit_charge`, which moves the charge through a state machine:

1. Postgres: the `payments` row says succeeded with its PaymentIntent (a credit
   is now owed). The row is checked first: the same kind, the same amount, no
   other PaymentIntent; a PaymentIntent belongs to one row (unique index).
2. Redis: the credit script credits the amount under a record keyed by the
   PaymentIntent that never expires; a second call answers the first credit.
   The ledger entry carries the PaymentIntent as its request id, so `rebuild`
   restores the record from the ledger (and a charge whose credit the ledger
   lacks is marked owed again).
3. Postgres: the row says credited; a recharge episode ends as succeeded.

A crash between any two steps leaves the row succeeded but not credited: the
next path to arrive, or the recharge worker's repair after
`recharge_repair_grace_s`, runs the same steps again, and step 2 answers the
credit made before instead of making a second one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import asyncpg

from metering import crash_points
from metering.account_state import publish_account_state
from metering.credits import Credit, add_charge_funds
from metering.errors import ChargeMismatch
from metering.events import emit_event, event_id
from metering.ledger.rebuild import restore_charge_credit
from metering.payments.recharge_lift import recheck_when_lifted
from metering.store import Store

log = logging.getLogger(__name__)

PAY_NOW = "pay_now"
AUTOMATIC_RECHARGE = "automatic_recharge"

# Step 1. An existing row is only moved on if it is the same charge; a missing one
# is inserted.
SQL_MARK_SUCCEEDED = """
    UPDATE payments SET status = 'succeeded', payment_intent_id = $5, failure_reason = NULL,
        updated_at = now()
    WHERE account_id = $1 AND payment_id = $2 AND kind = $3 AND amount_micros = $4
        AND coalesce(payment_intent_id, $5) = $5
    RETURNING credited"""
SQL_INSERT_SUCCEEDED = """
    INSERT INTO payments (account_id, payment_id, kind, amount_micros, status,
        payment_intent_id)
    VALUES ($1, $2, $3, $4, 'succeeded', $5)
    ON CONFLICT (account_id, payment_id) DO NOTHING
    RETURNING credited"""
# Rounds of step 1 before a charge is taken for another payment's (see
# record_succeeded).
RECORD_ROUNDS_MAX = 4
# Step 3.
SQL_MARK_CREDITED = """
    UPDATE payments SET credited = true, updated_at = now()
    WHERE account_id = $1 AND payment_id = $2 AND NOT credited"""
SQL_END_EPISODE_SUCCEEDED = """
    UPDATE recharge_episodes SET status = 'succeeded', last_reason = NULL, updated_at = now()
    WHERE account_id = $1 AND episode_us = $2 AND status = 'open'"""
# Charges owed a credit, for the repair.
SQL_OWED = """
    SELECT account_id, payment_id, kind, amount_micros, payment_intent_id FROM payments
    WHERE status = 'succeeded' AND NOT credited
        AND updated_at < now() - make_interval(secs => $1)
    ORDER BY updated_at LIMIT $2"""


def recharge_payment_id(episode_us: int) -> str:
    """The payments row of an episode's recharge: one charge credited per episode."""
    return f"recharge:{episode_us}"


def episode_of(payment_id: str) -> int | None:
    """The episode of a recharge's payment id, or None."""
    prefix, _, episode = payment_id.partition(":")
    return int(episode) if prefix == "recharge" and episode.isdigit() else None


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    """A charge Stripe says succeeded, and what it pays for."""

    account_id: str
    payment_id: str  # pay now: the client's id; recharge: recharge_payment_id(episode)
    kind: str  # PAY_NOW or AUTOMATIC_RECHARGE
    amount_micros: int
    payment_intent_id: str

    @property
    def episode_us(self) -> int | None:
        return episode_of(self.payment_id) if self.kind == AUTOMATIC_RECHARGE else None

    def reason(self) -> str:
        """The ledger detail after the source: which payment of the customer's."""
        return f"payment {self.payment_id}"


async def record_succeeded(db: Any, charge: Charge) -> bool | None:
    """Step 1: the payments row says succeeded with the charge's PaymentIntent.
    Returns whether the row says credited, or None when the row belongs to
    another charge (another kind, amount or PaymentIntent) or the PaymentIntent
    to another payment.

    An existing row is updated (twins recording the same charge at once, a
    repeated request and the webhook, queue on its row lock); a missing one is
    inserted. Not one INSERT ... ON CONFLICT DO UPDATE: with the unique index on
    the PaymentIntent beside the primary key, twins running it at once on the
    same row got a unique violation on their own PaymentIntent, or a deadlock
    on each other's speculative insertion (measured: 2 in 2,000 rounds of 6
    twins). Twins that insert the missing row at once can still meet each
    other's insertion (a unique violation, rarely a deadlock Postgres breaks
    after deadlock_timeout): the round after finds the winner's row (measured:
    never more than three rounds in 18,000 twins)."""
    args = (
        charge.account_id,
        charge.payment_id,
        charge.kind,
        charge.amount_micros,
        charge.payment_intent_id,
    )
    for _ in range(RECORD_ROUNDS_MAX):
        try:
            credited: bool | None = await db.fetchval(SQL_MARK_SUCCEEDED, *args)
            if credited is None:
                credited = await db.fetchval(SQL_INSERT_SUCCEEDED, *args)
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            credited = None  # the PaymentIntent is another row's, or a twin inserted
        if credited is not None:
            return credited
    return None


async def credit_charge(store: Store, db: Any, charge: Charge) -> Credit:
    """Credit a succeeded charge once (see the module docstring); answers the
    credit, the first one again on every later call. db is a pool or a connection
    outside any transaction (each step commits on its own)."""
    credited = await record_succeeded(db, charge)
    if credited is None:
        raise ChargeMismatch(
            f"charge {charge.payment_intent_id} does not match payment {charge.payment_id} "
            f"of account {charge.account_id}; nothing was credited"
        )
    crash_points.reached(store.settings, crash_points.CHARGE_RECORDED)
    # A Redis that lost its last second may lack the record of a credit the ledger
    # already holds (the ledger check took the money back into the balance): put
    # it back, or the script below would credit the charge a second time.
    await restore_charge_credit(store, db, charge.account_id, charge.payment_intent_id)
    credit = await add_charge_funds(
        store,
        charge.account_id,
        charge.payment_intent_id,
        charge.amount_micros,
        charge.kind,
        charge.reason(),
        settles_episode_us=charge.episode_us,
    )
    crash_points.reached(store.settings, crash_points.CHARGE_CREDITED)
    # Before the row says credited, so a crash here is redone, event included
    # (the notifier records an event id once).
    await _emit_succeeded(store, charge, credit)
    await db.execute(SQL_MARK_CREDITED, charge.account_id, charge.payment_id)
    episode_us = charge.episode_us
    if episode_us is not None:
        ended = await db.execute(SQL_END_EPISODE_SUCCEEDED, charge.account_id, episode_us)
        if ended.endswith(" 1"):
            # The credit cleared the pending mark and the last failure: pages show it.
            await publish_account_state(store, charge.account_id)
    elif not credit.replayed:
        # A payment that lifted the balance ends a recharge waiting after a decline.
        await recheck_when_lifted(
            store, db, charge.account_id, credit.balance_micros - credit.reserved_micros
        )
    if credit.replayed:
        log.info("charge %s was already credited", charge.payment_intent_id)
    return credit


async def _emit_succeeded(store: Store, charge: Charge, credit: Credit) -> None:
    if charge.episode_us is not None:
        await emit_event(
            store,
            charge.account_id,
            "recharge.succeeded",
            event_id("recharge.succeeded", charge.account_id, charge.episode_us),
            {"amount_micros": charge.amount_micros, "payment_intent_id": charge.payment_intent_id},
        )
        return
    await emit_event(
        store,
        charge.account_id,
        "payment.succeeded",
        event_id("payment.succeeded", charge.account_id, charge.payment_id),
        {
            "payment_id": charge.payment_id,
            "amount_micros": charge.amount_micros,
            "balance_micros": credit.balance_micros,
            "payment_intent_id": charge.payment_intent_id,
        },
    )


async def credit_owed(store: Store, db: Any) -> int:
    """The repair: credit charges that succeeded but were not credited (a process
    died in between) once they are older than the repair grace; at most
    recharge_batch_max of them. Returns how many were put right."""
    s = store.settings
    rows = await db.fetch(SQL_OWED, s.recharge_repair_grace_s, s.recharge_batch_max)
    for row in rows:
        charge = Charge(
            row["account_id"],
            row["payment_id"],
            row["kind"],
            row["amount_micros"],
            row["payment_intent_id"],
        )
        credit = await credit_charge(store, db, charge)
        log.warning(
            "repair: charge %s of %s %s",
            charge.payment_intent_id,
            charge.account_id,
            "was already credited" if credit.replayed else "credited now",
        )
    return len(rows)
