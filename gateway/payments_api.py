"""Payment endpoints: recharge settings, pay now, card on file, Stripe webhook.

Pay now, the card and the recharge settings belong to the customer: only the
account's own customer token may use them. An operator has no path to act for a
customer here (charging a card needs the card holder's own action); operators
adjust money with ops credits, which the ledger records with their reason.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import CUSTOMER, OPS, Unauthorized, authenticate
from gateway.bodies import BodyTooLarge, RequestBody, as_mapping, read_body
from gateway.responses import JSONResponse
from metering.errors import InvalidRequest, UnknownReceipt
from metering.fields import Email, RequestId
from metering.money import CREDIT_MICROS_MAX, format_usd
from metering.payments import card_setup, cards, pay_now, receipts, recharge_settings, webhooks
from metering.payments.recharge_settings import (
    RECHARGE_AMOUNT_MICROS_ABOVE,
    RECHARGE_THRESHOLD_MICROS_MAX,
    RECHARGE_THRESHOLD_MICROS_MIN,
)

CUSTOMER_ONLY = frozenset({CUSTOMER})
# Reading a receipt changes nothing: ops may, as they read the account.
CUSTOMER_OR_OPS = frozenset({CUSTOMER, OPS})
ABOVE, LEAST = RECHARGE_AMOUNT_MICROS_ABOVE, RECHARGE_THRESHOLD_MICROS_MIN


class RechargeRequest(RequestBody):
    """The automatic recharge settings, saved as one update."""

    amount_micros: Annotated[
        int,
        Meta(
            gt=ABOVE,
            le=CREDIT_MICROS_MAX,
            description="Charged when the balance falls below the threshold; must be "
            f"greater than {format_usd(ABOVE)} ({ABOVE}).",
            extra={"rule": f"an integer greater than {ABOVE} ({format_usd(ABOVE)})"},
        ),
    ]
    threshold_micros: Annotated[
        int,
        Meta(
            ge=LEAST,
            le=RECHARGE_THRESHOLD_MICROS_MAX,
            description="Recharge when available falls below this; at least "
            f"{format_usd(LEAST)} ({LEAST}).",
            extra={"rule": f"an integer of at least {LEAST} ({format_usd(LEAST)})"},
        ),
    ]
    failure_email: Annotated[Email, Meta(description="Told when an automatic recharge fails.")]
    enabled: Annotated[bool, Meta(description="Turn automatic recharge on (needs a card on file).")]


class PaymentRequest(RequestBody):
    """Pay now: charge the card on file and add the amount."""

    payment_id: Annotated[
        RequestId, Meta(description="The client's id of this payment (idempotency key).")
    ]
    amount_micros: Annotated[
        int,
        Meta(
            ge=1,
            le=CREDIT_MICROS_MAX,
            description="Amount to charge to the card on file and add, whole cents.",
        ),
    ]


class CardRequest(RequestBody):
    """A card to register: a SetupIntent the browser confirmed with Stripe.js (the
    dashboard), or a payment method id created with Stripe.js (API clients)."""

    setup_intent_id: (
        Annotated[
            str,
            Meta(
                max_length=255,
                description="A SetupIntent (seti_...) from POST .../card/setup-intents that "
                "the browser confirmed with Stripe.js; its card becomes the card on file.",
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    payment_method_id: (
        Annotated[
            str,
            Meta(
                max_length=255,
                description="Or a Stripe payment method id (pm_...) created in the browser "
                "by Stripe's elements.",
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


async def put_recharge(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_ONLY, account_id)
    b = await read_body(request, RechargeRequest, state.settings.request_body_bytes_max)
    saved = await recharge_settings.save_settings(
        state.store, state.db, account_id, msgspec.structs.asdict(b)
    )
    return JSONResponse({"account_id": account_id, **saved.as_dict()})


async def post_payment(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_ONLY, account_id)
    b = await read_body(request, PaymentRequest, state.settings.request_body_bytes_max)
    payment = await pay_now.pay_now(
        state.store,
        state.db,
        state.stripe,
        state.settings,
        account_id,
        b.payment_id,
        b.amount_micros,
    )
    link = receipts.receipt_path(state.settings, account_id, payment_id=payment.payment_id)
    return JSONResponse({"account_id": account_id, **payment.as_dict(), "receipt_url": link})


RECEIPT_QUERY = ("payment", "attempt", "signature")


async def get_receipt(request: Request) -> Response:
    """A receipt: with the customer's (or ops) token, or with the signature of a
    receipt link (emails carry no token). Reading it changes nothing."""
    state = request.state
    account_id = request.path_params["account_id"]
    params = request.query_params
    for name in params:
        if name not in RECEIPT_QUERY:
            raise InvalidRequest(name, f"unknown parameter {name!r}; expected: payment, attempt")
    reference = receipts.reference_of(params)
    if "signature" in params:
        if not receipts.signature_ok(state.settings, account_id, reference, params["signature"]):
            raise Unauthorized("this receipt link is not valid")
    else:
        await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    receipt = await receipts.find_receipt(
        state.db, state.stripe, state.settings, account_id, params
    )
    if receipt is None:
        raise UnknownReceipt(f"account {account_id} has no such payment")
    return JSONResponse(receipt.as_dict())


async def put_card(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_ONLY, account_id)
    b = await read_body(request, CardRequest, state.settings.request_body_bytes_max)
    card = await card_setup.register_card(
        state.store, state.db, state.stripe, account_id, as_mapping(b)
    )
    return JSONResponse({"account_id": account_id, **card.as_dict()})


async def post_card_setup(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_ONLY, account_id)
    setup = await card_setup.start_card_setup(state.store, state.db, state.stripe, account_id)
    return JSONResponse({"account_id": account_id, **setup.as_dict()}, 201)


async def delete_card(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_ONLY, account_id)
    deleted = await cards.delete_card(state.store, state.db, state.stripe, account_id)
    return JSONResponse({"account_id": account_id, "deleted": deleted, "recharge_enabled": False})


async def post_stripe_webhook(request: Request) -> Response:
    """Unauthenticated: the Stripe signature is the authentication."""
    state = request.state
    bytes_max = state.settings.stripe_webhook_bytes_max
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bytes_max:
            raise BodyTooLarge(f"the webhook body is larger than {bytes_max} bytes")
        chunks.append(chunk)
    event = webhooks.verify_event(
        b"".join(chunks), request.headers.get("stripe-signature"), state.settings
    )
    outcome = await webhooks.handle_event(state.store, state.db, event)
    return JSONResponse({"received": True, "event_id": event["id"], "outcome": outcome})
