"""The browser pages (static/, no build step) and the small JSON the pages need
that is not account data: billing items in the product's words."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.auth import CUSTOMER, OPS, SWITCH, authenticate
from gateway.responses import JSONResponse
from metering.ledger_entries import CREDIT_ITEMS, ITEM_LABELS

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ANY_ROLE = frozenset({CUSTOMER, OPS, SWITCH})
# Pages carry a token in their URL: never cache them (no referrer leaves either:
# gateway/security_headers.py sends Referrer-Policy on every answer).
PAGE_HEADERS = {"Cache-Control": "no-store"}


async def get_billing_items(request: Request) -> Response:
    """Every billing item with its label in the product's words and its direction."""
    state = request.state
    await authenticate(request, state.settings, state.store, ANY_ROLE)
    items = [
        {"item": item, "label": label, "direction": "credit" if item in CREDIT_ITEMS else "debit"}
        for item, label in ITEM_LABELS.items()
    ]
    return JSONResponse({"items": items})


def _page(name: str) -> Route:
    async def serve(request: Request) -> Response:
        return FileResponse(STATIC_DIR / name, headers=PAGE_HEADERS)

    serve.__name__ = "page_" + name.split(".")[0]
    return Route("/" + name.split(".")[0], serve, methods=["GET"])


def page_routes() -> list[BaseRoute]:
    """/dashboard, /ops and their assets under /static."""
    return [
        _page("dashboard.html"),
        _page("ops.html"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
