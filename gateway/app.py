"""The Starlette application: routes from the endpoint table, clients built once
in the lifespan from one Settings object and handed to handlers as state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp

from gateway import log_redaction, ops_api
from gateway.auth_limits import AuthFailureLimiter
from gateway.connection_guard import ConnectionGuard
from gateway.endpoints import ENDPOINTS
from gateway.errors import EXCEPTION_HANDLERS
from gateway.fast_path import SwitchFastPath
from gateway.live_api import OPENAPI_WEBSOCKETS, account_live, ops_live
from gateway.live_hub import LiveHub
from gateway.metrics_files import MetricsFlusher
from gateway.observe import RequestIds, RequestObserver
from gateway.openapi import build_openapi
from gateway.pages import page_routes
from gateway.responses import JSONResponse
from gateway.security_headers import SecurityHeaders
from metering.errors import DatabaseNotMigrated
from metering.ledger.database import create_pool
from metering.ledger.migrate import check_at_start
from metering.ledger.recovery import check_redis
from metering.ledger.writer import run_in_process as run_ledger_writer
from metering.logs import configure_logging
from metering.metrics_export import MultiprocessFiles
from metering.operations.status import Readiness
from metering.payments.stripe_client import build_stripe_client, close_stripe_client
from metering.restart_fence import RestartFence
from metering.settings import Settings
from metering.store import Store, open_store
from metering.sweeper import run_sweeper

log = logging.getLogger(__name__)


class GatewayState(TypedDict):
    """What the lifespan hands every request as `request.state` (Starlette's
    lifespan state): the clients, built once per process from one Settings."""

    settings: Settings
    store: Store
    db: Any  # asyncpg.Pool
    stripe: stripe.StripeClient
    live_hub: LiveHub
    # Read deadlines and connections per address, used by the protocol (the
    # name is gateway.connection_guard.STATE_KEY).
    connection_guard: ConnectionGuard
    # Failed authentication per address and token prefix (gateway/auth_limits.py).
    auth_limiter: AuthFailureLimiter
    # /readyz's checks (cached schema state), and this process's metrics files
    # (None when the app runs without the gateway's start-up: totals from memory).
    readiness: Readiness
    metrics_files: MultiprocessFiles | None
    metrics_flusher: MetricsFlusher | None


class GatewayApp(Starlette):
    """Starlette behind the switch's fast path (gateway/fast_path.py), the request
    observer (a request id and the duration of every answer, gateway/observe.py)
    and the security headers, which also reach the 500 answers Starlette's own
    error layer renders."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def build_middleware_stack(self) -> ASGIApp:
        # The switch's requests are answered by the fast path, outermost, which adds
        # the same headers and records the same observation inline; everything
        # else goes through the observer and the headers layer to Starlette.
        security = SecurityHeaders(super().build_middleware_stack(), self.settings)
        ids = RequestIds(self.settings) if self.settings.request_metrics else None
        app: ASGIApp = security if ids is None else RequestObserver(security, ids)
        return SwitchFastPath(app, self.settings, security.headers_for, ids)


def create_app(settings: Settings) -> Starlette:
    openapi_document = build_openapi()
    # Websockets are outside OpenAPI's model: described as an extension.
    openapi_document["x-websockets"] = OPENAPI_WEBSOCKETS

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[GatewayState]:
        # Postgres pool: lazy (min_size=0), so the gateway starts without Postgres;
        # the authorize path never uses it.
        db = await create_pool(settings)
        try:
            # Postgres down: serve without it. Up but lacking migrations: refuse to
            # start, saying which command to run.
            postgres_up = await check_at_start(db, settings.database_timeout_s)
            # Redis in line with the ledger before serving (it may have come back
            # without its last second), and again whenever it restarts later.
            if postgres_up:
                await check_redis(settings, db)
            fence = RestartFence(lambda: check_redis(settings, db), settings.redis_timeout_s)
            store = await open_store(settings, fence)
        except BaseException as exc:
            if isinstance(exc, DatabaseNotMigrated):
                log.error("the gateway will not start: %s", exc)
            await db.close()
            raise
        stripe_client = build_stripe_client(settings)
        stop = asyncio.Event()
        tasks = []
        live_hub = LiveHub(settings)
        await live_hub.start()
        tasks.append(asyncio.create_task(live_hub.run(stop), name="live-hub"))
        if settings.reservation_sweep_interval_s > 0:
            tasks.append(asyncio.create_task(run_sweeper(store, stop), name="sweeper"))
        if settings.ledger_writer_in_gateway:
            tasks.append(asyncio.create_task(run_ledger_writer(store, stop), name="ledger"))
        flusher = MetricsFlusher(settings, live_hub) if settings.metrics_dir else None
        if flusher is not None:
            tasks.append(asyncio.create_task(flusher.run(stop), name="metrics"))
        try:
            yield GatewayState(
                settings=settings,
                store=store,
                db=db,
                stripe=stripe_client,
                live_hub=live_hub,
                connection_guard=ConnectionGuard(settings),
                auth_limiter=AuthFailureLimiter(settings),
                readiness=Readiness(settings),
                metrics_files=flusher.files if flusher is not None else None,
                metrics_flusher=flusher,
            )
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
        hub = request.state.live_hub
        return JSONResponse(
            {"status": "ok", "live_sockets": hub.count, "live_subscribed": hub.subscribed.is_set()}
        )

    # The router tries routes in order: the switch's endpoints, the hot path, go
    # first (measured: route matching was 3% of a gateway's CPU under load).
    by_heat = sorted(ENDPOINTS, key=lambda e: e.roles != ("switch",))
    routes: list[BaseRoute] = [
        Route(route_path(e.path), e.handler, methods=[e.method]) for e in by_heat
    ]
    routes += [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/livez", ops_api.livez, methods=["GET"]),
        Route("/readyz", ops_api.readyz, methods=["GET"]),
        Route("/metrics", ops_api.metrics, methods=["GET"]),
        WebSocketRoute("/v1/accounts/{account_id}/live", account_live),
        WebSocketRoute("/v1/ops/live", ops_live),
        *page_routes(settings),
    ]
    return GatewayApp(
        settings, routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS
    )


def route_path(path: str) -> str:
    """The router's pattern of a documented path. A call id may hold '/' (SIP
    Call-IDs do, and the id rule allows it): sent percent-encoded, it arrives
    decoded, so its segment must match across slashes."""
    return path.replace("{call_id}", "{call_id:path}")


def app_from_env() -> Starlette:
    """Factory for uvicorn (`--factory`), so each worker process reads settings once."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings)  # in each worker process
    log_redaction.install()
    return create_app(settings)
