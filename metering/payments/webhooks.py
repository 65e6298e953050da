"""Stripe webhooks: verify the signature, process each event id once.

The signature (HMAC-SHA256 over "<timestamp>.<payload>" with the endpoint's
secret, header `Stripe-Signature: t=...,v1=...`) is checked by the SDK with a
timestamp tolerance, so a replayed old delivery is refused. Applying an event
is idempotent on its own (a charge is credited once, forever:
metering/payments/charges.py), so no transaction is held around the Redis
credit: the event id is recorded after it is applied, a redelivery of a recorded
event only counts, and a failure half-way leaves it unrecorded for Stripe's own
retry to apply again.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import stripe

from metering.errors import WebhookRejected
from metering.payments.charges import AUTOMATIC_RECHARGE, PAY_NOW
from metering.payments.pay_now import settle_pay_now_event
from metering.payments.recharge_worker import settle_recharge_event
from metering.settings import Settings
from metering.store import Store

log = logging.getLogger(__name__)

HANDLED = ("payment_intent.succeeded", "payment_intent.payment_failed")
# A delivery of an event already applied: counted, nothing else.
SQL_COUNT_REDELIVERY = """
    UPDATE stripe_webhook_events SET deliveries = deliveries + 1 WHERE event_id = $1
    RETURNING event_id"""
# After applying it (two first deliveries at once both apply it, idempotently).
SQL_RECORD_EVENT = """
    INSERT INTO stripe_webhook_events (event_id, type, object_id) VALUES ($1, $2, $3)
    ON CONFLICT (event_id) DO UPDATE SET deliveries = stripe_webhook_events.deliveries + 1"""


def verify_event(payload: bytes, signature: str | None, settings: Settings) -> dict[str, Any]:
    """The event, if the signature is valid and fresh; WebhookRejected otherwise."""
    if not signature:
        raise WebhookRejected("the Stripe-Signature header is missing")
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(
            text,
            signature,
            settings.stripe_webhook_secret,
            tolerance=settings.stripe_webhook_tolerance_s,
        )
    except UnicodeDecodeError:
        raise WebhookRejected("the webhook payload is not UTF-8") from None
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(
            f"the webhook signature was refused: {exc.user_message or exc}",
        ) from None
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise WebhookRejected("the webhook payload is not JSON") from None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
    ):
        raise WebhookRejected("the webhook payload is not a Stripe event")
    return event


async def handle_event(store: Store, db: Any, event: dict[str, Any]) -> str:
    """Apply a verified event once; returns what happened (for the answer and the log)."""
    if event["type"] not in HANDLED:
        return "ignored"
    intent = (event.get("data") or {}).get("object") or {}
    kind = (intent.get("metadata") or {}).get("kind")
    if await db.fetchval(SQL_COUNT_REDELIVERY, event["id"]):
        return "duplicate"
    succeeded = event["type"] == "payment_intent.succeeded"
    if kind == PAY_NOW:
        outcome = await settle_pay_now_event(store, db, intent, succeeded)
    elif kind == AUTOMATIC_RECHARGE and succeeded:
        outcome = await settle_recharge_event(store, db, intent)
    else:
        # Failed recharges are recorded by the worker, which saw the answer.
        outcome = "noted"
    await db.execute(SQL_RECORD_EVENT, event["id"], event["type"], intent.get("id"))
    log.info("stripe event %s %s: %s", event["id"], event["type"], outcome)
    return outcome
