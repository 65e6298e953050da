"""The browser pages (static/, no build step) and the small JSON the pages need
that is not account data: billing items in the product's words."""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.auth import CUSTOMER, OPS, SWITCH, authenticate
from gateway.responses import JSONResponse
from metering.entry_words import ITEM_NAMES
from metering.ledger_entries import CREDIT_ITEMS, ITEM_LABELS
from metering.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ANY_ROLE = frozenset({CUSTOMER, OPS, SWITCH})
# docs: the API reference (Swagger UI over /openapi.json, static/docs.html).
PAGES = ("dashboard", "ops", "receipt", "docs")


async def get_billing_items(request: Request) -> Response:
    """Every billing item with its label in the product's words and its direction."""
    state = request.state
    await authenticate(request, state.settings, state.store, ANY_ROLE)
    items = [
        {
            "item": item,
            "label": label,
            "name": ITEM_NAMES.get(item, label),
            "direction": "credit" if item in CREDIT_ITEMS else "debit",
        }
        for item, label in ITEM_LABELS.items()
    ]
    return JSONResponse({"items": items})


def page_headers(settings: Settings) -> dict[str, str]:
    """Pages carry a token in their URL: never cached. Their Content-Security-Policy
    (gateway/csp.py), Referrer-Policy and the other security headers are added to
    every answer by gateway/security_headers.py, once."""
    return {"Cache-Control": "no-store"}


def render_page(name: str, settings: Settings) -> str:
    """The page's HTML with the settings it names filled in ({{stripe_js_url}},
    {{stripe_publishable_key}}, the pay-now and recharge bounds), escaped."""
    text = (STATIC_DIR / f"{name}.html").read_text()
    for key in (
        "stripe_js_url",
        "stripe_publishable_key",
        "payment_micros_min",
        "payment_micros_max",
        "recharge_micros_max",
    ):
        text = text.replace("{{" + key + "}}", html.escape(str(getattr(settings, key))))
    return text


def _page(name: str, settings: Settings) -> Route:
    body = render_page(name, settings)
    headers = page_headers(settings)

    async def serve(request: Request) -> Response:
        return HTMLResponse(body, headers=headers)

    serve.__name__ = "page_" + name
    return Route("/" + name, serve, methods=["GET"])


def page_routes(settings: Settings) -> list[BaseRoute]:
    """/dashboard, /ops, /receipt and their assets under /static."""
    return [
        *(_page(name, settings) for name in PAGES),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
