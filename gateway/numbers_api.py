"""Phone number inventory: the account's numbers (customer, ops, switch), ops
releasing one, and every suspended number (the ops page)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import CUSTOMER, OPS, SWITCH, authenticate
from gateway.responses import JSONResponse
from metering import fields
from metering.numbers import inventory

ANY_ROLE = frozenset({CUSTOMER, OPS, SWITCH})
OPS_ONLY = frozenset({OPS})
SUSPENDED_LISTED_MAX = 1_000


async def get_numbers(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, ANY_ROLE, account_id)
    show = fields.choice(request.query_params.get("status", "held"), "status", ("held", "all"))
    numbers = await inventory.list_numbers(state.store, state.db, account_id, show == "all")
    return JSONResponse({"account_id": account_id, "numbers": numbers})


async def delete_number(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    released = await inventory.release_number(
        state.store,
        state.db,
        account_id,
        request.path_params["number"],
        "released by operations",
        time.time_ns() // 1_000,
    )
    return JSONResponse({"account_id": account_id, **released})


async def get_suspended_numbers(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    numbers = await inventory.suspended_numbers(state.db, state.settings, SUSPENDED_LISTED_MAX)
    return JSONResponse({"numbers": numbers})
