"""Health, metrics and the ops status report.

- `GET /livez`: the process runs and its event loop turns (no I/O): restart it
  when this fails.
- `GET /readyz`: Redis answers, the scripts are loaded, a Postgres that answers
  carries every migration (metering/operations/status.py, Readiness): route
  traffic to it only when this is 200. Postgres being down does not make it
  unready: the authorize path never uses Postgres.
- `GET /metrics`: Prometheus's text format, every gateway process of this
  instance summed (metering/metrics_export.py), plus the gauges computed when
  scraped (ledger lag, open calls, workers, recharge backlog).
- `GET /v1/ops/status` (ops): ledger lag, worker heartbeats, recharge backlog,
  the continuous reconcile's last pass, versions.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import OPS, authenticate
from gateway.responses import JSONResponse
from metering.metrics import METRICS
from metering.metrics_export import CONTENT_TYPE, render
from metering.operations.status import scrape_families, status_report

OPS_ONLY = frozenset({OPS})


async def livez(request: Request) -> Response:
    return JSONResponse({"status": "alive", "pid": os.getpid()})


async def readyz(request: Request) -> Response:
    state = request.state
    ready, checks = await state.readiness.check(state.store, state.db)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )


async def metrics(request: Request) -> Response:
    state = request.state
    files = state.metrics_files
    if files is not None:
        state.metrics_flusher.update_gauges()
        files.flush()  # this process's latest, before summing every process's files
    extra = await scrape_families(state.store, state.db, state.settings)
    body = render(METRICS, files.directory if files is not None else None, extra)
    return Response(body, media_type=CONTENT_TYPE)


async def get_ops_status(request: Request) -> Response:
    state = request.state
    await authenticate(request, state.settings, state.store, OPS_ONLY)
    report = await status_report(state.store, state.db, state.settings)
    report["gateway"] = {"pid": os.getpid(), "live_sockets": state.live_hub.count}
    return JSONResponse(report)
