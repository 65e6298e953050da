"""The Starlette application: routes from the endpoint table, clients built once
in the lifespan from one Settings object and handed to handlers as state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.endpoints import ENDPOINTS
from gateway.errors import EXCEPTION_HANDLERS
from gateway.openapi import build_openapi
from gateway.responses import JSONResponse
from metering.postgres import open_database
from metering.settings import Settings
from metering.store import open_store
from metering.stripe_client import build_stripe_client, close_stripe_client
from metering.sweeper import run_sweeper


def create_app(settings: Settings) -> Starlette:
    openapi_document = build_openapi()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = await open_store(settings)
        # Postgres pool (connects lazily) and the one Stripe client (payments, issue 5).
        db = await open_database(settings)
        stripe_client = build_stripe_client(settings)
        stop = asyncio.Event()
        tasks = []
        if settings.reservation_sweep_interval_s > 0:
            tasks.append(asyncio.create_task(run_sweeper(store, stop), name="sweeper"))
        try:
            yield {"settings": settings, "store": store, "db": db, "stripe": stripe_client}
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await close_stripe_client(stripe_client)
            await db.close()
            await store.redis.aclose()

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document)

    async def health(request: Request) -> Response:
        await request.state.store.redis.ping()
        return JSONResponse({"status": "ok"})

    routes = [Route(e.path, e.handler, methods=[e.method]) for e in ENDPOINTS]
    routes += [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)


def app_from_env() -> Starlette:
    """Factory for uvicorn (`--factory`), so each worker process reads settings once."""
    return create_app(Settings.from_env())
