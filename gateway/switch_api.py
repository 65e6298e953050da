"""The switch's endpoints: one-shot debits and call credit control."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import SWITCH, authenticate
from gateway.bodies import Body, Field, read_json
from gateway.responses import JSONResponse
from metering import debits, reservations

SWITCH_ONLY = frozenset({SWITCH})

ACCOUNT = Field("string", True, "The account to charge.")
DIRECTION = Field("string", True, "outbound or inbound", enum=("outbound", "inbound"))

MESSAGE_BODY = Body(
    {
        "account_id": ACCOUNT,
        "message_id": Field(
            "string", True, "The switch's id of the text message (idempotency key)."
        ),
        "direction": DIRECTION,
        "number": Field(
            "string",
            False,
            "The account's number the text is sent from or to: refused (402 "
            "number_suspended) while that number is suspended.",
        ),
    }
)
ATTEMPT_BODY = Body(
    {
        "account_id": ACCOUNT,
        "attempt_id": Field("string", True, "The id of this ring-through connection attempt."),
    }
)
PURCHASE_BODY = Body(
    {
        "account_id": ACCOUNT,
        "purchase_id": Field("string", True, "The id of this purchase."),
        "number": Field("string", True, "The phone number bought, e.g. +15551234567."),
        "renewal": Field(
            "string",
            False,
            "automatic (default): the gateway renews it each period; switch: the switch "
            "renews it through /v1/numbers/renewals.",
            enum=("automatic", "switch"),
        ),
    }
)
RENEWAL_BODY = Body(
    {
        "account_id": ACCOUNT,
        "renewal_id": Field("string", True, "The id of this renewal."),
        "number": Field("string", True, "The phone number renewed."),
    }
)
RESERVE_BODY = Body(
    {
        "account_id": ACCOUNT,
        "call_id": Field("string", True, "The switch's call id (idempotency key)."),
        "direction": DIRECTION,
        "number": Field(
            "string",
            False,
            "The account's number called (inbound) or calling (outbound): refused (402 "
            "number_suspended) while that number is suspended.",
        ),
    }
)
EXTEND_BODY = Body(
    {
        "account_id": ACCOUNT,
        "extend_id": Field(
            "string",
            False,
            "Optional id of this extension; a retry with it returns the first grant.",
        ),
    }
)
COMMIT_BODY = Body(
    {
        "account_id": ACCOUNT,
        "duration_seconds": Field(
            "integer",
            True,
            "The call's real duration (release a call that never connected).",
            minimum=1,
        ),
    }
)
RELEASE_BODY = Body({"account_id": ACCOUNT})


async def _switch_body(request: Request, body: Body) -> dict[str, Any]:
    state = request.state
    await authenticate(request, state.settings, state.store, SWITCH_ONLY)
    return await read_json(request, body, state.settings.request_body_bytes_max)


async def post_message(request: Request) -> Response:
    b = await _switch_body(request, MESSAGE_BODY)
    charge = await debits.message(
        request.state.store, b["account_id"], b["message_id"], b["direction"], b.get("number")
    )
    return JSONResponse({"message_id": b["message_id"], **charge.as_dict()})


async def post_ring_through_attempt(request: Request) -> Response:
    b = await _switch_body(request, ATTEMPT_BODY)
    charge = await debits.ring_through_attempt(
        request.state.store, b["account_id"], b["attempt_id"]
    )
    return JSONResponse({"attempt_id": b["attempt_id"], **charge.as_dict()})


async def post_number_purchase(request: Request) -> Response:
    b = await _switch_body(request, PURCHASE_BODY)
    charge = await debits.number_purchase(
        request.state.store,
        b["account_id"],
        b["purchase_id"],
        b["number"],
        b.get("renewal", "automatic"),
    )
    return JSONResponse(
        {"purchase_id": b["purchase_id"], "number": b["number"], **charge.as_dict()}
    )


async def post_number_renewal(request: Request) -> Response:
    b = await _switch_body(request, RENEWAL_BODY)
    charge = await debits.number_renewal(
        request.state.store, b["account_id"], b["renewal_id"], b["number"]
    )
    return JSONResponse({"renewal_id": b["renewal_id"], "number": b["number"], **charge.as_dict()})


async def post_call(request: Request) -> Response:
    b = await _switch_body(request, RESERVE_BODY)
    grant = await reservations.reserve(
        request.state.store, b["account_id"], b["call_id"], b["direction"], b.get("number")
    )
    return JSONResponse(grant.as_dict())


async def post_call_extend(request: Request) -> Response:
    b = await _switch_body(request, EXTEND_BODY)
    grant = await reservations.extend(
        request.state.store, b["account_id"], request.path_params["call_id"], b.get("extend_id")
    )
    return JSONResponse(grant.as_dict())


async def post_call_commit(request: Request) -> Response:
    b = await _switch_body(request, COMMIT_BODY)
    charge = await reservations.commit(
        request.state.store, b["account_id"], request.path_params["call_id"], b["duration_seconds"]
    )
    return JSONResponse(charge.as_dict())


async def post_call_release(request: Request) -> Response:
    b = await _switch_body(request, RELEASE_BODY)
    released = await reservations.release(
        request.state.store, b["account_id"], request.path_params["call_id"]
    )
    return JSONResponse(released.as_dict())
