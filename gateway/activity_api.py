"""The activity view (JSON pages and CSV export) and the ledger lag for ops.
Reads Postgres through the lifespan's pool; never on the authorize path."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.auth import CUSTOMER, OPS, authenticate
from gateway.responses import JSONResponse
from metering.burn import burn_rates
from metering.ledger import activity, usage
from metering.ledger.lag import ledger_lag
from metering.payments import receipts

CUSTOMER_OR_OPS = frozenset({CUSTOMER, OPS})
OPS_ONLY = frozenset({OPS})


async def get_activity(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    query = activity.parse_query(account_id, request.query_params, state.settings)
    page = await activity.account_activity(state.db, query, state.settings)
    # Card payments say which card and link their receipt.
    await receipts.annotate_payments(
        state.db, state.stripe, state.settings, account_id, page.entries
    )
    return JSONResponse(page.as_dict())


async def get_activity_csv(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    query = activity.parse_query(account_id, request.query_params, state.settings)
    # Checked before the first byte, so a refusal is still a proper 4xx.
    await activity.check_export(state.db, query, state.settings)

    async def rows() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(activity.CSV_COLUMNS)
        async for page in activity.export_pages(state.db, query, state.settings):
            writer.writerows(activity.csv_row(e) for e in page)
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        if out.tell():
            yield out.getvalue()

    filename = f"activity-{account_id}.csv"
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def get_usage(request: Request) -> Response:
    state = request.state
    account_id = request.path_params["account_id"]
    await authenticate(request, state.settings, state.store, CUSTOMER_OR_OPS, account_id)
    query = usage.parse_query(account_id, request.query_params, state.settings)
    return JSONResponse(await usage.account_usage(state.db, query, state.settings))


async def get_burn_rates(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    return JSONResponse((await burn_rates(state.store)).as_dict())


async def get_ledger_lag(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    lag = await ledger_lag(state.store)
    return JSONResponse(lag.as_dict())
