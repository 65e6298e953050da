"""`python -m gateway`: serve the API with uvicorn (uvloop, httptools)."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from metering.settings import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the gateway (the bench's bare app serves with the same)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "loop": "uvloop",
        # httptools and websockets with read deadlines and a per-address cap
        # (gateway/connection_guard.py: uvicorn has no header read timeout).
        "http": "gateway.connection_guard:GuardedHttpToolsProtocol",
        "ws": "gateway.connection_guard:GuardedWebSocketProtocol",
        "timeout_keep_alive": settings.http_keep_alive_s,
        "forwarded_allow_ips": settings.http_forwarded_allow_ips,
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "ws_per_message_deflate": settings.live_deflate,
        "ws_max_size": settings.live_client_frame_bytes_max,
    }


def main() -> None:
    settings = Settings.from_env()
    # uvicorn configures only its own loggers; the domain's (sweeper, ledger
    # writer task, payments) log through the root logger at the same level.
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run("gateway.app:app_from_env", factory=True, **server_options(settings))


if __name__ == "__main__":
    main()
