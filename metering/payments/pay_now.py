"""Pay now: charge the card on file and credit the balance, once per payment id.

The Postgres row remembers the payment and, once Stripe charged, its
PaymentIntent; the Stripe call carries an idempotency key derived from the
payment id; the credit is made once per PaymentIntent, forever
(metering/payments/charges.py). So a repeated request, a retried Stripe call
and a redelivered `payment_intent.succeeded` webhook all land on the one
credit, however late they come.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import stripe

from metering import accounts, crash_points, fields
from metering.errors import (
    AuthenticationRequired,
    CardDeclined,
    ChargeMismatch,
    IdempotencyConflict,
    NoCardOnFile,
    PaymentFailed,
    Unavailable,
)
from metering.payments.cards import card_on_file
from metering.payments.charges import PAY_NOW, Charge, credit_charge
from metering.payments.stripe_client import (
    charge_on_session,
    idempotency_key,
    intent_outcome,
    to_cents,
)
from metering.settings import Settings
from metering.store import Store

log = logging.getLogger(__name__)

SQL_INSERT_PAYMENT = """
    INSERT INTO payments (account_id, payment_id, kind, amount_micros, status)
    VALUES ($1, $2, 'pay_now', $3, 'pending')
    ON CONFLICT (account_id, payment_id) DO NOTHING RETURNING payment_id"""
SQL_PAYMENT = """
    SELECT kind, amount_micros, status, payment_intent_id, failure_reason, credited
    FROM payments WHERE account_id = $1 AND payment_id = $2"""
# Pay now waiting for the customer's authentication: the PaymentIntent to ask about.
SQL_PAYMENT_AWAITS_CUSTOMER = """
    UPDATE payments SET payment_intent_id = $3, updated_at = now()
    WHERE account_id = $1 AND payment_id = $2 AND status = 'pending'"""
# A failure never overwrites a success (a late payment_failed webhook after a retry).
SQL_PAYMENT_FAILED = """
    UPDATE payments SET status = 'failed', payment_intent_id = coalesce($3, payment_intent_id),
        failure_reason = $4, updated_at = now()
    WHERE account_id = $1 AND payment_id = $2 AND status <> 'succeeded'"""


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    amount_micros: int
    status: str
    balance_micros: int
    available_micros: int
    payment_intent_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "amount_micros": self.amount_micros,
            "status": self.status,
            "balance_micros": self.balance_micros,
            "available_micros": self.available_micros,
            "payment_intent_id": self.payment_intent_id,
        }


async def pay_now(
    store: Store,
    db: Any,
    client: stripe.StripeClient,
    settings: Settings,
    account_id: str,
    payment_id: Any,
    amount_micros: Any,
) -> Payment:
    """Charge the card on file and credit the balance, once per payment id."""
    fields.account_id(account_id)
    fields.request_id(payment_id, "payment_id")
    fields.integer(
        amount_micros, "amount_micros", settings.payment_micros_min, settings.payment_micros_max
    )
    to_cents(amount_micros)
    await accounts.get_account(store, account_id)
    row = await db.fetchrow(SQL_PAYMENT, account_id, payment_id)
    if row is not None:
        if row["kind"] != PAY_NOW or row["amount_micros"] != amount_micros:
            raise IdempotencyConflict(
                f"payment {payment_id} was already used with another amount; "
                "a retry must repeat the first body exactly"
            )
        if row["status"] == "succeeded":
            return await _credit(store, db, account_id, payment_id, amount_micros, row)
        if row["status"] == "failed":
            raise PaymentFailed(
                f"payment {payment_id} failed: {row['failure_reason']}; "
                "nothing was credited (use a new payment_id to try again)",
                reason=row["failure_reason"],
            )
    awaiting = row["payment_intent_id"] if row is not None else None
    if awaiting:
        # The bank asked the customer to confirm this payment: Stripe says how that went.
        outcome = await intent_outcome(client, awaiting)
    else:
        card = await card_on_file(db, account_id)
        if card is None:
            raise NoCardOnFile(f"account {account_id} has no card on file; register a card first")
        # A concurrent twin may insert first; both then make the same idempotent Stripe call.
        await db.execute(SQL_INSERT_PAYMENT, account_id, payment_id, amount_micros)
        # The customer is at the page: on-session, so a bank's authentication can happen.
        outcome = await charge_on_session(
            client,
            settings,
            card.customer_id,
            card.payment_method_id,
            amount_micros,
            {"account_id": account_id, "payment_id": payment_id, "kind": PAY_NOW},
            idempotency_key(PAY_NOW, account_id, payment_id),
        )
    if outcome.requires_action:
        await db.execute(
            SQL_PAYMENT_AWAITS_CUSTOMER, account_id, payment_id, outcome.payment_intent_id
        )
        raise AuthenticationRequired(
            "your bank asks you to confirm this payment: confirm it with Stripe.js "
            "(confirmCardPayment with client_secret), then send the same payment again; "
            "nothing is charged until then",
            client_secret=outcome.client_secret,
            payment_intent_id=outcome.payment_intent_id,
        )
    if outcome.succeeded:
        assert outcome.payment_intent_id is not None
        crash_points.reached(settings, crash_points.CHARGED)
        charge = Charge(account_id, payment_id, PAY_NOW, amount_micros, outcome.payment_intent_id)
        credit = await credit_charge(store, db, charge)
        return _payment(charge, credit.balance_micros, credit.reserved_micros)
    if outcome.retryable:
        # Left pending: the same payment id retried later reuses the idempotency
        # key, and a succeeded webhook credits it if the charge went through.
        raise Unavailable(f"{outcome.reason}; retry with the same payment_id")
    await db.execute(
        SQL_PAYMENT_FAILED, account_id, payment_id, outcome.payment_intent_id, outcome.reason
    )
    raise CardDeclined(
        f"the card was declined, nothing was credited: {outcome.reason}", reason=outcome.reason
    )


async def _credit(
    store: Store, db: Any, account_id: str, payment_id: str, amount_micros: int, row: Any
) -> Payment:
    """A payment Stripe already charged: credit it if that never finished, else
    answer the first credit again."""
    charge = Charge(account_id, payment_id, PAY_NOW, amount_micros, row["payment_intent_id"])
    credit = await credit_charge(store, db, charge)
    return _payment(charge, credit.balance_micros, credit.reserved_micros)


def _payment(charge: Charge, balance_micros: int, reserved_micros: int) -> Payment:
    return Payment(
        charge.payment_id,
        charge.amount_micros,
        "succeeded",
        balance_micros,
        balance_micros - reserved_micros,
        charge.payment_intent_id,
    )


async def settle_pay_now_event(
    store: Store, db: Any, intent: dict[str, Any], succeeded: bool
) -> str:
    """A payment_intent webhook for a pay-now payment: credit it (once) or mark it failed."""
    meta = intent.get("metadata") or {}
    account_id, payment_id = str(meta.get("account_id")), str(meta.get("payment_id"))
    row = await db.fetchrow(SQL_PAYMENT, account_id, payment_id)
    if row is None or row["kind"] != PAY_NOW:
        log.warning("webhook for unknown payment %s/%s", account_id, payment_id)
        return "unknown_payment"
    if to_cents(row["amount_micros"]) != int(intent.get("amount") or 0):
        log.error("webhook amount differs for payment %s/%s", account_id, payment_id)
        return "amount_mismatch"
    if succeeded:
        charge = Charge(account_id, payment_id, PAY_NOW, row["amount_micros"], str(intent["id"]))
        try:
            credit = await credit_charge(store, db, charge)
        except ChargeMismatch as exc:
            log.error("webhook: %s", exc)
            return "charge_mismatch"
        return "already_credited" if credit.replayed else "credited"
    err = intent.get("last_payment_error") or {}
    reason = f"{err.get('code') or 'payment_failed'}: {err.get('message') or 'payment failed'}"
    await db.execute(SQL_PAYMENT_FAILED, account_id, payment_id, intent["id"], reason)
    return "failed"
