"""`python -m gateway`: serve the API with uvicorn (uvloop, httptools), in
METERING_WORKERS processes that each listen on the port (gateway/workers.py)."""

from __future__ import annotations

from typing import Any

from gateway.metrics_files import prepare_directory
from gateway.workers import configure_logging, serve
from metering.metrics_export import process_exited
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
        # Logging is configured by metering.logs (JSON lines, secrets masked), in
        # the supervisor and again in each worker process (app_from_env).
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "ws_per_message_deflate": settings.live_deflate,
        "ws_max_size": settings.live_client_frame_bytes_max,
    }


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    # Prometheus's multiprocess directory, made before any worker starts.
    directory, cleanup = prepare_directory(settings)
    try:
        # Several workers: one SO_REUSEPORT socket each (gateway/workers.py).
        serve(server_options(settings), on_worker_exit=lambda pid: process_exited(directory, pid))
    finally:
        cleanup()


if __name__ == "__main__":
    main()
