"""Low-balance alert settings, account events and webhook registrations (an
account's, and ops' global ones)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import CUSTOMER, OPS, authenticate
from gateway.bodies import RequestBody, as_mapping, read_body
from gateway.responses import JSONResponse
from metering import fields
from metering.events import EVENT_TYPES
from metering.fields import INT64_MAX
from metering.ledger.database import acquire
from metering.notify import alerts, outbox, webhooks

CUSTOMER_OR_OPS = frozenset({CUSTOMER, OPS})
OPS_ONLY = frozenset({OPS})
EVENTS_LISTED_MAX = 50


class AlertsRequest(RequestBody):
    """Low-balance alert settings."""

    low_balance_threshold_micros: Annotated[
        int,
        Meta(
            ge=0,
            le=INT64_MAX,
            description="Email (and webhook balance.low) when the balance falls below this; "
            "0 turns the low-balance alert off (reaching zero is always told).",
        ),
    ]
    email: (
        Annotated[str, Meta(description="Where alerts go; empty: the recharge failure email.")]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class WebhookRequest(RequestBody):
    """A webhook registration."""

    url: Annotated[str, Meta(description="The http(s) endpoint that receives the events.")]
    events: Annotated[list[str], Meta(description="Event types: " + ", ".join(EVENT_TYPES) + ".")]
    description: Annotated[str, Meta(description="A note for yourself.")] | msgspec.UnsetType = (
        msgspec.UNSET
    )


async def put_alerts(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    b = await read_body(request, AlertsRequest, state.settings.request_body_bytes_max)
    saved = await alerts.save_settings(state.store, state.db, account_id, as_mapping(b))
    return JSONResponse({"account_id": account_id, **saved.as_dict()})


async def get_events(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    fields.account_id(account_id)
    async with acquire(state.db, state.settings.database_timeout_s) as conn:
        events = await outbox.recent_events(conn, account_id, EVENTS_LISTED_MAX)
    return JSONResponse({"account_id": account_id, "events": events})


async def post_webhook(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    b = await read_body(request, WebhookRequest, state.settings.request_body_bytes_max)
    fields.account_id(account_id)
    reg = await webhooks.register(state.db, state.settings, account_id, as_mapping(b))
    return JSONResponse(reg.as_dict(), 201)


async def get_webhooks(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    fields.account_id(account_id)
    listed = await webhooks.list_webhooks(state.db, state.settings, account_id)
    return JSONResponse({"account_id": account_id, "webhooks": listed})


async def delete_webhook(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    await webhooks.delete(state.db, state.settings, account_id, request.path_params["webhook_id"])
    return JSONResponse({"deleted": True, "webhook_id": request.path_params["webhook_id"]})


async def post_ops_webhook(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    b = await read_body(request, WebhookRequest, state.settings.request_body_bytes_max)
    reg = await webhooks.register(state.db, state.settings, None, as_mapping(b))
    return JSONResponse(reg.as_dict(), 201)


async def get_ops_webhooks(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    failing = request.query_params.get("failing", "0") in ("1", "true")
    listed = await webhooks.list_webhooks(state.db, state.settings, None, failing)
    return JSONResponse({"webhooks": listed})


async def delete_ops_webhook(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    await webhooks.delete(state.db, state.settings, None, request.path_params["webhook_id"])
    return JSONResponse({"deleted": True, "webhook_id": request.path_params["webhook_id"]})
