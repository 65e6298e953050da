"""Account endpoints: create and read accounts, customer tokens, ops credits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import CUSTOMER, OPS, SWITCH, authenticate
from gateway.bodies import Body, Field, read_json
from gateway.responses import JSONResponse
from metering import accounts, credits
from metering.ledger import registry
from metering.rate_card import RateCard

OPS_ONLY = frozenset({OPS})
ANY_ROLE = frozenset({OPS, SWITCH, CUSTOMER})

CREATE_BODY = Body(
    {
        "account_id": Field("string", True, "1-64 letters, digits, '_', '.', '-'."),
        "rate_card": Field("object", True, "Prices in micros; see RateCard."),
        "max_concurrent_calls": Field("integer", False, "0 (default) means no limit.", minimum=0),
    }
)
TOKEN_BODY = Body({"label": Field("string", True, "What the token is for, e.g. 'dashboard'.")})
CREDIT_BODY = Body(
    {
        "credit_id": Field("string", True, "Idempotency key of this credit."),
        "amount_micros": Field("integer", True, "Amount to add, > 0.", minimum=1),
        "reason": Field("string", True, "Why (shown in the activity list)."),
    }
)


async def post_account(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    b = await read_json(request, CREATE_BODY, state.settings.request_body_bytes_max)
    rate_card = RateCard.parse(b["rate_card"])
    # Written through to Postgres first (metering/ledger/registry.py). A repeated
    # identical creation answers like the first (201); a different one is a 409.
    account, _ = await registry.create_account(
        state.store, state.db, b["account_id"], rate_card, b.get("max_concurrent_calls", 0)
    )
    return JSONResponse(account.as_dict(), 201)


async def get_account(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, ANY_ROLE, account_id)
    account = await accounts.get_account(state.store, account_id)
    return JSONResponse(account.as_dict())


async def post_token(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    b = await read_json(request, TOKEN_BODY, state.settings.request_body_bytes_max)
    token = await registry.issue_customer_token(state.store, state.db, account_id, b["label"])
    return JSONResponse({"account_id": account_id, "label": b["label"], "token": token}, 201)


async def post_credit(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    b = await read_json(request, CREDIT_BODY, state.settings.request_body_bytes_max)
    credit = await credits.add_funds(
        state.store, account_id, b["credit_id"], b["amount_micros"], "ops_credit", b["reason"]
    )
    return JSONResponse({"credit_id": b["credit_id"], **credit.as_dict()})
