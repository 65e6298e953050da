"""Payment endpoints: recharge settings, pay now, card on file, Stripe webhook."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import CUSTOMER, OPS, Unauthorized, authenticate
from gateway.bodies import Body, BodyTooLarge, Field, read_json
from gateway.responses import JSONResponse
from metering.errors import InvalidRequest, UnknownReceipt
from metering.payments import card_setup, cards, pay_now, receipts, recharge_settings, webhooks

CUSTOMER_OR_OPS = frozenset({CUSTOMER, OPS})

RECHARGE_BODY = Body(
    {
        "amount_micros": Field(
            "integer",
            True,
            "Charged when the balance falls below the "
            "threshold; must be greater than 50 USD (50000000).",
            minimum=50_000_001,
        ),
        "threshold_micros": Field(
            "integer",
            True,
            "Recharge when available falls below this; at least 10 USD (10000000).",
            minimum=10_000_000,
        ),
        "failure_email": Field("string", True, "Told when an automatic recharge fails."),
        "enabled": Field("boolean", True, "Turn automatic recharge on (needs a card on file)."),
    }
)
PAYMENT_BODY = Body(
    {
        "payment_id": Field("string", True, "The client's id of this payment (idempotency key)."),
        "amount_micros": Field(
            "integer", True, "Amount to charge to the card on file and add, whole cents.", minimum=1
        ),
    }
)
CARD_BODY = Body(
    {
        "setup_intent_id": Field(
            "string",
            False,
            "A SetupIntent (seti_...) from POST .../card/setup-intents that the browser "
            "confirmed with Stripe.js; its card becomes the card on file.",
        ),
        "payment_method_id": Field(
            "string",
            False,
            "Or a Stripe payment method id (pm_...) created with Stripe.js.",
        ),
    }
)


async def put_recharge(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    b = await read_json(request, RECHARGE_BODY, state.settings.request_body_bytes_max)
    saved = await recharge_settings.save_settings(state.store, state.db, account_id, b)
    return JSONResponse({"account_id": account_id, **saved.as_dict()})


async def post_payment(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    b = await read_json(request, PAYMENT_BODY, state.settings.request_body_bytes_max)
    payment = await pay_now.pay_now(
        state.store,
        state.db,
        state.stripe,
        state.settings,
        account_id,
        b["payment_id"],
        b["amount_micros"],
    )
    link = receipts.receipt_path(state.settings, account_id, payment_id=payment.payment_id)
    return JSONResponse({"account_id": account_id, **payment.as_dict(), "receipt_url": link})


RECEIPT_QUERY = ("payment", "attempt", "signature")


async def get_receipt(request: Request) -> Response:
    """A receipt: with the customer's (or ops) token, or with the signature of a
    receipt link (emails carry no token)."""
    state = request.state
    account_id = request.path_params["account_id"]
    params = request.query_params
    for name in params:
        if name not in RECEIPT_QUERY:
            raise InvalidRequest(name, f"unknown parameter {name!r}; expected: payment, attempt")
    reference = (
        "payment=" + params["payment"]
        if params.get("payment")
        else "attempt=" + params.get("attempt", "")
    )
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
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    b = await read_json(request, CARD_BODY, state.settings.request_body_bytes_max)
    card = await card_setup.register_card(state.store, state.db, state.stripe, account_id, b)
    return JSONResponse({"account_id": account_id, **card.as_dict()})


async def post_card_setup(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    setup = await card_setup.start_card_setup(state.store, state.db, state.stripe, account_id)
    return JSONResponse({"account_id": account_id, **setup.as_dict()}, 201)


async def delete_card(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
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
