"""What every long-running worker command gets from the command line, around
its own loop: a heartbeat in Redis (metering/heartbeats.py) and, with a metrics
port (`--metrics-port`, else METERING_WORKER_METRICS_PORT; 0: none), an HTTP
server on it answering

    GET /metrics   this process's metrics in Prometheus's text format
    GET /livez     {"status": "alive", "kind", "pid"}

Why a port per worker and not a textfile for node_exporter: the workers run in
containers of their own (docker/docker-compose.yml), where Prometheus reaches
each by its service name, with no shared file system or node_exporter; and a
port answers "is it alive" by itself (Prometheus's `up`). The server runs in the
worker's own event loop (uvicorn, like the gateway), without signal handlers of
its own: the worker's SIGTERM handling stays as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from metering.heartbeats import HeartbeatWriter
from metering.metrics import METRICS
from metering.metrics_export import CONTENT_TYPE, render
from metering.settings import Settings
from metering.store import connect_redis
from metering.tools.output import UsageError


class _Server(uvicorn.Server):
    """uvicorn inside the worker's loop, leaving the worker's signals alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_app(kind: str) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(render(METRICS, None), media_type=CONTENT_TYPE)

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive", "kind": kind, "pid": os.getpid()})

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/livez", livez, methods=["GET"]),
        ]
    )


def bind(host: str, port: int) -> socket.socket:
    """The metrics port, taken before the worker starts (a port in use is a usage error)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"the metrics port {host}:{port} cannot be used: {exc}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def run_worker(kind: str, work: Awaitable[int], settings: Settings, port: int) -> int:
    """Run the worker's own coroutine with a heartbeat and the metrics server
    beside it; both stop when the worker returns."""
    sock = bind(settings.worker_metrics_host, port) if port else None
    stop = asyncio.Event()
    redis = connect_redis(settings)
    beside: list[asyncio.Task[Any]] = [
        asyncio.create_task(HeartbeatWriter(redis, settings, kind).run(stop), name="heartbeat")
    ]
    server = None
    if sock is not None:
        config = uvicorn.Config(
            metrics_app(kind), log_config=None, access_log=False, lifespan="off"
        )
        server = _Server(config)
        beside.append(asyncio.create_task(server.serve(sockets=[sock]), name="metrics"))
    try:
        return await work
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        for task in beside:
            with contextlib.suppress(Exception):
                await task
        await redis.aclose()
        if sock is not None:
            sock.close()
