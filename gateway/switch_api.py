"""The switch's endpoints: one-shot debits and call credit control."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from gateway import answers
from gateway.auth import SWITCH, authenticate
from gateway.bodies import BodyT, RequestBody, read_body
from gateway.responses import answer
from metering import debits, reservations
from metering.fields import INT64_MAX, AccountId, PhoneNumber, RequestId

SWITCH_ONLY = frozenset({SWITCH})

Account = Annotated[AccountId, Meta(description="The account to charge.")]
Direction = Annotated[Literal["outbound", "inbound"], Meta(description="outbound or inbound")]


class MessageRequest(RequestBody):
    """A text message to charge."""

    account_id: Account
    message_id: Annotated[
        RequestId, Meta(description="The switch's id of the text message (idempotency key).")
    ]
    direction: Direction
    number: Annotated[
        PhoneNumber | None,
        Meta(
            description="The account's number the text is sent from or to: refused (402 "
            "number_suspended) while that number is suspended."
        ),
    ] = None


class AttemptRequest(RequestBody):
    """A ring-through connection attempt to charge."""

    account_id: Account
    attempt_id: Annotated[
        RequestId, Meta(description="The id of this ring-through connection attempt.")
    ]


class PurchaseRequest(RequestBody):
    """A phone number bought."""

    account_id: Account
    purchase_id: Annotated[RequestId, Meta(description="The id of this purchase.")]
    number: Annotated[PhoneNumber, Meta(description="The phone number bought, e.g. +15551234567.")]
    renewal: Annotated[
        Literal["automatic", "switch"],
        Meta(
            description="automatic (default): the gateway renews it each period; switch: "
            "the switch renews it through /v1/numbers/renewals."
        ),
    ] = "automatic"


class RenewalRequest(RequestBody):
    """A phone number renewed for one period."""

    account_id: Account
    renewal_id: Annotated[RequestId, Meta(description="The id of this renewal.")]
    number: Annotated[PhoneNumber, Meta(description="The phone number renewed.")]


class ReserveRequest(RequestBody):
    """A call set up: reserve its first grant."""

    account_id: Account
    call_id: Annotated[RequestId, Meta(description="The switch's call id (idempotency key).")]
    direction: Direction
    number: Annotated[
        PhoneNumber | None,
        Meta(
            description="The account's number called (inbound) or calling (outbound): refused (402 "
            "number_suspended) while that number is suspended."
        ),
    ] = None


class ExtendRequest(RequestBody):
    """Another grant for an open call."""

    account_id: Account
    extend_id: Annotated[
        RequestId | None,
        Meta(description="Optional id of this extension; a retry with it returns the first grant."),
    ] = None


class CommitRequest(RequestBody):
    """The call's real duration at hang-up."""

    account_id: Account
    duration_seconds: Annotated[
        int,
        Meta(
            ge=1,
            le=INT64_MAX,
            description="The call's real duration (release a call that never connected); "
            "at most METERING_CALL_DURATION_S_MAX.",
            extra={
                "rule": "a whole number of seconds, at least 1 (release a call that "
                "never connected)"
            },
        ),
    ]


class ReleaseRequest(RequestBody):
    """A call that never connected."""

    account_id: Account


async def _switch_body(request: Request, body_type: type[BodyT]) -> BodyT:
    state = request.state
    await authenticate(request, state.settings, state.store, SWITCH_ONLY)
    return await read_body(request, body_type, state.settings.request_body_bytes_max)


async def post_message(request: Request) -> Response:
    b = await _switch_body(request, MessageRequest)
    charge = await debits.message(
        request.state.store, b.account_id, b.message_id, b.direction, b.number
    )
    return answer(answers.MessageCharged.of(b.message_id, charge))


async def post_ring_through_attempt(request: Request) -> Response:
    b = await _switch_body(request, AttemptRequest)
    charge = await debits.ring_through_attempt(request.state.store, b.account_id, b.attempt_id)
    return answer(answers.AttemptCharged.of(b.attempt_id, charge))


async def post_number_purchase(request: Request) -> Response:
    b = await _switch_body(request, PurchaseRequest)
    charge = await debits.number_purchase(
        request.state.store, b.account_id, b.purchase_id, b.number, b.renewal
    )
    return answer(answers.PurchaseCharged.of(b.purchase_id, b.number, charge))


async def post_number_renewal(request: Request) -> Response:
    b = await _switch_body(request, RenewalRequest)
    charge = await debits.number_renewal(request.state.store, b.account_id, b.renewal_id, b.number)
    return answer(answers.RenewalCharged.of(b.renewal_id, b.number, charge))


async def post_call(request: Request) -> Response:
    b = await _switch_body(request, ReserveRequest)
    grant = await reservations.reserve(
        request.state.store, b.account_id, b.call_id, b.direction, b.number
    )
    return answer(answers.CallGrant.of(grant))


async def post_call_extend(request: Request) -> Response:
    b = await _switch_body(request, ExtendRequest)
    grant = await reservations.extend(
        request.state.store, b.account_id, request.path_params["call_id"], b.extend_id
    )
    return answer(answers.CallGrant.of(grant))


async def post_call_commit(request: Request) -> Response:
    b = await _switch_body(request, CommitRequest)
    charge = await reservations.commit(
        request.state.store, b.account_id, request.path_params["call_id"], b.duration_seconds
    )
    return answer(answers.CallCharged.of(charge))


async def post_call_release(request: Request) -> Response:
    b = await _switch_body(request, ReleaseRequest)
    released = await reservations.release(
        request.state.store, b.account_id, request.path_params["call_id"]
    )
    return answer(answers.CallReleased.of(released))
