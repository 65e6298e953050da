"""The one Stripe client of a process, and what every Stripe call shares:
amounts in cents, idempotency keys, and how a failure is classified.

The official SDK is used over HTTP (the real API or a local Stripe-compatible
server at settings.stripe_api_base); its own retries reuse the idempotency key,
so a retried call never charges twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import stripe

from metering.errors import InvalidRequest
from metering.settings import Settings

MICROS_PER_CENT = 10_000
# Stripe allows 255 characters; a hash keeps long account and payment ids inside it.
IDEMPOTENCY_KEY_LENGTH_MAX = 255


def build_stripe_client(settings: Settings) -> stripe.StripeClient:
    """One client for the process: bounded time per call and bounded retries."""
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base},
        max_network_retries=settings.stripe_max_network_retries,
        http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_s),
    )


async def close_stripe_client(client: stripe.StripeClient) -> None:
    """Close the async HTTP connections the client opened."""
    http_client = client._requestor._get_http_client()  # noqa: SLF001 - no public close
    await http_client.close_async()  # type: ignore[no-untyped-call]


def to_cents(amount_micros: int, field: str = "amount_micros") -> int:
    """Stripe charges whole cents: refuse an amount that is not one."""
    if amount_micros % MICROS_PER_CENT:
        raise InvalidRequest(
            field, f"{field} must be a whole number of cents (a multiple of {MICROS_PER_CENT})"
        )
    return amount_micros // MICROS_PER_CENT


def idempotency_key(kind: str, *parts: str | int) -> str:
    """A stable key for one logical Stripe call: the same parts give the same key."""
    text = ":".join([kind, *(str(p) for p in parts)])
    if len(text) <= 120:
        return text
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()}"


@dataclasses.dataclass(frozen=True, slots=True)
class ChargeOutcome:
    """What one charge came to."""

    succeeded: bool
    payment_intent_id: str | None
    reason: str  # empty on success; for people and for the failure email
    retryable: bool  # network, 5xx, rate limit: worth the same call again later
    # The bank asks the customer to authenticate (3-D Secure): Stripe.js completes
    # it in the browser with this client secret (confirmCardPayment).
    requires_action: bool = False
    client_secret: str | None = None


def failure_of(exc: Exception) -> ChargeOutcome:
    """Classify a Stripe SDK error: declines are final, transport trouble is retryable."""
    if isinstance(exc, stripe.CardError):
        err = exc.error
        code = getattr(err, "decline_code", None) or exc.code or "card_declined"
        message = exc.user_message or str(exc) or "the card was declined"
        pi = getattr(err, "payment_intent", None)
        pi_id = pi.get("id") if isinstance(pi, dict) else None
        return ChargeOutcome(False, pi_id, f"{code}: {message}", False)
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return ChargeOutcome(False, None, f"Stripe unreachable: {_short(exc)}", True)
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        if status >= 500 or status in (409, 429):
            return ChargeOutcome(False, None, f"Stripe error {status}: {_short(exc)}", True)
        return ChargeOutcome(
            False, None, f"Stripe refused the request ({status}): {_short(exc)}", False
        )
    raise exc


def _short(exc: Exception) -> str:
    text = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def off_session_charge(
    settings: Settings,
    customer_id: str,
    payment_method_id: str,
    amount_micros: int,
    metadata: dict[str, str],
) -> dict[str, Any]:
    """The request that creates and confirms a PaymentIntent against the saved card,
    off-session (kept whole by the caller, so that it can be sent again exactly)."""
    params = _intent_params(settings, customer_id, payment_method_id, amount_micros)
    params.update({"confirm": True, "off_session": True, "metadata": metadata})
    return params


async def send_charge(
    client: stripe.StripeClient, params: dict[str, Any], key: str
) -> ChargeOutcome:
    """Send an off_session_charge request; the same request and key again get the
    first charge's answer from Stripe (for 24 hours), never a second charge."""
    return await _confirm_intent(client, params, key)


def _intent_params(
    settings: Settings, customer_id: str, payment_method_id: str, amount_micros: int
) -> dict[str, Any]:
    return {
        "amount": to_cents(amount_micros),
        "currency": settings.stripe_currency,
        "customer": customer_id,
        "payment_method": payment_method_id,
    }


async def _confirm_intent(
    client: stripe.StripeClient, params: dict[str, Any], key: str
) -> ChargeOutcome:
    try:
        intent = await client.v1.payment_intents.create_async(
            params,  # type: ignore[arg-type]
            {"idempotency_key": key},
        )
    except stripe.StripeError as exc:
        return failure_of(exc)
    return outcome_of(intent)


def outcome_of(intent: Any) -> ChargeOutcome:
    """What a PaymentIntent's status means for the charge."""
    if intent.status == "succeeded":
        return ChargeOutcome(True, intent.id, "", False)
    if intent.status == "requires_action":
        return ChargeOutcome(
            False,
            intent.id,
            "authentication_required: the bank asks the customer to confirm the payment",
            False,
            requires_action=True,
            client_secret=intent.client_secret,
        )
    if intent.status == "processing":
        # Stripe has not decided yet: the succeeded webhook credits it if it goes through.
        return ChargeOutcome(False, intent.id, "Stripe error 0: the payment is processing", True)
    # A StripeObject, not a dict: read by attribute.
    err = getattr(intent, "last_payment_error", None)
    code = getattr(err, "code", None) or intent.status
    message = getattr(err, "message", None) or f"payment {intent.status}"
    return ChargeOutcome(False, intent.id, f"{code}: {message}", False)


async def charge_on_session(
    client: stripe.StripeClient,
    settings: Settings,
    customer_id: str,
    payment_method_id: str,
    amount_micros: int,
    metadata: dict[str, str],
    key: str,
) -> ChargeOutcome:
    """Create and confirm a PaymentIntent against the saved card with the customer
    present (pay now): a bank that asks for authentication gets it through the
    browser (requires_action), as Stripe documents for on-session payments."""
    params = _intent_params(settings, customer_id, payment_method_id, amount_micros)
    params.update({"payment_method_types": ["card"], "confirm": True, "metadata": metadata})
    return await _confirm_intent(client, params, key)


async def intent_outcome(client: stripe.StripeClient, payment_intent_id: str) -> ChargeOutcome:
    """Where a PaymentIntent stands now (after the customer authenticated, or not)."""
    try:
        intent = await client.v1.payment_intents.retrieve_async(payment_intent_id)
    except stripe.StripeError as exc:
        return failure_of(exc)
    return outcome_of(intent)
