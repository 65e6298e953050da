"""The switch's endpoints: one-shot debits and call credit control."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from gateway import answers
from gateway.auth import SWITCH, authenticate
from gateway.bodies import BodyT, RequestBody, read_body
from gateway.errors import error_answer
from gateway.responses import answer
from metering import debits, reservations
from metering.debits import Charge
from metering.errors import InvalidRequest
from metering.fields import INT64_MAX, AccountId, PhoneNumber, RequestId
from metering.store import Store

SWITCH_ONLY = frozenset({SWITCH})
BATCH_PATH = "/v1/debit-batches"

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


class MessageItem(MessageRequest, tag_field="type", tag="message"):
    """A text message in a batch ("type": "message")."""


class AttemptItem(AttemptRequest, tag_field="type", tag="attempt"):
    """A ring-through attempt in a batch ("type": "attempt")."""


class DebitBatchRequest(RequestBody):
    """Texts and ring-through attempts to charge in one request: each item is
    charged (or refused) on its own, with its own id and idempotency, exactly
    as the single endpoint would, and answered in order."""

    items: Annotated[
        list[MessageItem | AttemptItem],
        Meta(
            min_length=1,
            description="At most METERING_DEBIT_BATCH_ITEMS_MAX items (100 by default).",
        ),
    ]


async def _switch_body(request: Request, body_type: type[BodyT]) -> BodyT:
    state = request.state
    await authenticate(request, state.settings, state.store, SWITCH_ONLY)
    return await read_body(request, body_type, state.settings.request_body_bytes_max)


# Each endpoint's work, apart from HTTP: (store, body, call id from the path) ->
# answer. The Starlette handlers below and the fast path (gateway/fast_path.py)
# both run these.


async def charge_message(store: Store, b: MessageRequest, _: str) -> answers.MessageCharged:
    charge = await debits.message(store, b.account_id, b.message_id, b.direction, b.number)
    return answers.MessageCharged.of(charge, b.message_id)


async def charge_attempt(store: Store, b: AttemptRequest, _: str) -> answers.AttemptCharged:
    charge = await debits.ring_through_attempt(store, b.account_id, b.attempt_id)
    return answers.AttemptCharged.of(charge, b.attempt_id)


async def charge_purchase(store: Store, b: PurchaseRequest, _: str) -> answers.Answer:
    charge = await debits.number_purchase(store, b.account_id, b.purchase_id, b.number, b.renewal)
    return answers.PurchaseCharged.of(charge, b.purchase_id, b.number)


async def charge_renewal(store: Store, b: RenewalRequest, _: str) -> answers.Answer:
    charge = await debits.number_renewal(store, b.account_id, b.renewal_id, b.number)
    return answers.RenewalCharged.of(charge, b.renewal_id, b.number)


async def open_call(store: Store, b: ReserveRequest, _: str) -> answers.Answer:
    grant = await reservations.reserve(store, b.account_id, b.call_id, b.direction, b.number)
    return answers.CallGrant.of(grant)


async def extend_call(store: Store, b: ExtendRequest, call_id: str) -> answers.Answer:
    grant = await reservations.extend(store, b.account_id, call_id, b.extend_id)
    return answers.CallGrant.of(grant)


async def commit_call(store: Store, b: CommitRequest, call_id: str) -> answers.Answer:
    charge = await reservations.commit(store, b.account_id, call_id, b.duration_seconds)
    return answers.CallCharged.of(charge)


async def release_call(store: Store, b: ReleaseRequest, call_id: str) -> answers.Answer:
    released = await reservations.release(store, b.account_id, call_id)
    return answers.CallReleased.of(released)


def _item_result(
    item: MessageItem | AttemptItem, outcome: Charge | Exception
) -> answers.MessageResult | answers.AttemptResult:
    """One batch item's answer, or the error the single endpoint would give."""
    is_message = isinstance(item, MessageItem)
    if isinstance(outcome, Exception):
        status, body, _ = error_answer(outcome, "POST", BATCH_PATH)
        error = msgspec.convert(body, answers.Error)
        if is_message:
            return answers.MessageResult(status, error=error)
        return answers.AttemptResult(status, error=error)
    if isinstance(item, MessageItem):
        return answers.MessageResult(200, answers.MessageCharged.of(outcome, item.message_id))
    return answers.AttemptResult(200, answers.AttemptCharged.of(outcome, item.attempt_id))


async def charge_batch(store: Store, b: DebitBatchRequest, _: str) -> answers.Answer:
    """Every item's script written at once, in order (one pipelined write,
    metering/pipelining.py, no task per item); the answers come back in order."""
    limit = store.settings.debit_batch_items_max
    if len(b.items) > limit:
        raise InvalidRequest("items", f"items must be a list of 1 to {limit} items")
    calls: list[debits.DebitCall | Exception] = []
    for item in b.items:
        try:
            if isinstance(item, MessageItem):
                calls.append(
                    debits.message_call(
                        store, item.account_id, item.message_id, item.direction, item.number
                    )
                )
            else:
                calls.append(debits.attempt_call(store, item.account_id, item.attempt_id))
        except Exception as exc:
            calls.append(exc)
    outcomes = await debits.debit_many(store, calls)
    return answers.DebitBatchCharged(
        [_item_result(item, outcome) for item, outcome in zip(b.items, outcomes, strict=True)]
    )


class Action(NamedTuple):
    body: type[RequestBody]
    run: Callable[[Store, Any, str], Awaitable[answers.Answer]]


# By path; the call actions by the path's last segment (/v1/calls/{call_id}/<name>).
ACTIONS: dict[str, Action] = {
    "/v1/messages": Action(MessageRequest, charge_message),
    "/v1/ring-through-attempts": Action(AttemptRequest, charge_attempt),
    "/v1/numbers/purchases": Action(PurchaseRequest, charge_purchase),
    "/v1/numbers/renewals": Action(RenewalRequest, charge_renewal),
    "/v1/calls": Action(ReserveRequest, open_call),
    BATCH_PATH: Action(DebitBatchRequest, charge_batch),
}
CALL_ACTIONS: dict[str, Action] = {
    "extend": Action(ExtendRequest, extend_call),
    "commit": Action(CommitRequest, commit_call),
    "release": Action(ReleaseRequest, release_call),
}


def _handler(name: str, action: Action) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        b = await _switch_body(request, action.body)
        call_id = request.path_params.get("call_id", "")
        return answer(await action.run(request.state.store, b, call_id))

    handler.__name__ = handler.__qualname__ = name  # the OpenAPI operationId
    return handler


post_message = _handler("post_message", ACTIONS["/v1/messages"])
post_ring_through_attempt = _handler(
    "post_ring_through_attempt", ACTIONS["/v1/ring-through-attempts"]
)
post_number_purchase = _handler("post_number_purchase", ACTIONS["/v1/numbers/purchases"])
post_number_renewal = _handler("post_number_renewal", ACTIONS["/v1/numbers/renewals"])
post_call = _handler("post_call", ACTIONS["/v1/calls"])
post_debit_batch = _handler("post_debit_batch", ACTIONS[BATCH_PATH])
post_call_extend = _handler("post_call_extend", CALL_ACTIONS["extend"])
post_call_commit = _handler("post_call_commit", CALL_ACTIONS["commit"])
post_call_release = _handler("post_call_release", CALL_ACTIONS["release"])
