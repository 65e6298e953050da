"""Account endpoints: create and read accounts, customer tokens, ops credits."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from gateway import answers
from gateway.auth import CUSTOMER, OPS, SWITCH, authenticate
from gateway.bodies import RequestBody, read_body
from gateway.responses import JSONResponse, answer
from metering import accounts, credits
from metering.accounts import CONCURRENT_CALLS_MAX, TOKEN_LABEL_LENGTH_MAX
from metering.credits import REASON_LENGTH_MAX
from metering.fields import AccountId, RequestId, single_line
from metering.ledger import customer_tokens, registry
from metering.money import CREDIT_MICROS_MAX
from metering.payments import recharge_lift
from metering.rate_card import RateCard

OPS_ONLY = frozenset({OPS})
ANY_ROLE = frozenset({OPS, SWITCH, CUSTOMER})


class CreateAccountRequest(RequestBody):
    """A new account with its rate card (zero balance)."""

    account_id: AccountId
    rate_card: RateCard
    max_concurrent_calls: Annotated[
        int, Meta(ge=0, le=CONCURRENT_CALLS_MAX, description="0 (default) means no limit.")
    ] = 0


class TokenRequest(RequestBody):
    """A customer token for the account's dashboard."""

    label: Annotated[
        str, single_line(TOKEN_LABEL_LENGTH_MAX, "What the token is for, e.g. 'dashboard'.")
    ]


class CreditRequest(RequestBody):
    """Funds added by ops."""

    credit_id: Annotated[RequestId, Meta(description="Idempotency key of this credit.")]
    amount_micros: Annotated[
        int, Meta(ge=1, le=CREDIT_MICROS_MAX, description="Amount to add, in micros.")
    ]
    reason: Annotated[str, single_line(REASON_LENGTH_MAX, "Why (shown in the activity list).")]


async def post_account(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    b = await read_body(request, CreateAccountRequest, state.settings.request_body_bytes_max)
    # Written through to Postgres first (metering/ledger/registry.py). A repeated
    # identical creation answers like the first (201); a different one is a 409.
    account, _ = await registry.create_account(
        state.store, state.db, b.account_id, b.rate_card, b.max_concurrent_calls
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
    b = await read_body(request, TokenRequest, state.settings.request_body_bytes_max)
    token = await registry.issue_customer_token(state.store, state.db, account_id, b.label)
    token_id = customer_tokens.token_id_of(accounts.token_digest(token))
    return answer(answers.TokenIssued(account_id, b.label, token, token_id), 201)


async def get_tokens(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    tokens = await customer_tokens.list_tokens(
        state.db, state.settings.database_timeout_s, account_id
    )
    records = [answers.TokenRecord(**t.as_dict()) for t in tokens]
    return answer(answers.TokenList(account_id, records))


async def delete_token(request: Request) -> Response:
    """Revoke one token: it stops working at once, and its open sockets close."""
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    (token,) = await customer_tokens.revoke(
        state.store, state.db, account_id, request.path_params["token_id"]
    )
    return answer(answers.TokenRecord(**token.as_dict()))


async def post_credit(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    b = await read_body(request, CreditRequest, state.settings.request_body_bytes_max)
    credit = await credits.add_funds(
        state.store, account_id, b.credit_id, b.amount_micros, "ops_credit", b.reason
    )
    # A recharge waiting after a decline that this credit made unnecessary ends now.
    await recharge_lift.recheck_when_lifted(
        state.store, state.db, account_id, credit.balance_micros - credit.reserved_micros
    )
    return answer(answers.FundsAdded.of(b.credit_id, credit))
