"""Several gateway processes on one port, each with a listening socket of its
own (SO_REUSEPORT), so the kernel spreads new connections evenly over them.

With uvicorn's own workers all processes accept on one shared socket, and the
first to wake accepts a whole burst of connections: measured with `ss` during
wrk runs, 32 keep-alive connections split 21/11, 24/8 and 32/0 between two
workers, and the figures swung with the split (bench/README.md). Here the
kernel assigns each connection to one of the sockets by a hash of its
addresses when it arrives.

The supervisor (this process) only starts, watches and stops the workers:
- a worker that dies is started again (one that fails within
  `STARTUP_GRACE_S` of its start, `STARTUP_FAILURES_MAX` times in a row, stops
  the whole gateway: a broken configuration would fail the same way forever);
- SIGTERM or SIGINT stops the workers (SIGTERM, uvicorn's graceful shutdown),
  and kills what is still running after `STOP_TIMEOUT_S`;
- each worker asks Linux to stop it when the supervisor dies (PR_SET_PDEATHSIG).

Before starting, the supervisor makes sure nothing else listens on the port: a
second gateway started on the same port would otherwise share it silently.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from metering import logs
from metering.settings import Settings

log = logging.getLogger("gateway.workers")

STARTUP_GRACE_S = 10.0
STARTUP_FAILURES_MAX = 3
STOP_TIMEOUT_S = 15.0
WATCH_INTERVAL_S = 0.5
APP = "gateway.app:app_from_env"


def configure_logging(level: str) -> None:
    """Every logger (uvicorn's, the domain's) through metering.logs' one handler:
    JSON lines (or text), secrets masked, libraries quiet."""
    logs.configure_logging(level, Settings.from_env())


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket of this worker's own on the shared port."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def check_port_free(host: str, port: int) -> None:
    """Refuse to start when another process already listens on the port (a bind
    without SO_REUSEPORT fails then, whatever that process set)."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise SystemExit(f"gateway: cannot listen on {host}:{port}: {exc}") from None
    finally:
        probe.close()


def _stop_with_parent() -> None:
    with contextlib.suppress(Exception):  # Linux only; elsewhere the worker outlives it
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def run_worker(app: str, options: dict[str, Any]) -> None:
    """One worker process: its own SO_REUSEPORT socket, one uvicorn server."""
    _stop_with_parent()
    configure_logging(options["log_level"])
    config = uvicorn.Config(app, factory=True, **options)
    sock = listening_socket(config.host, config.port, config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    def __init__(
        self,
        app: str,
        options: dict[str, Any],
        workers: int,
        on_worker_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        # Told the pid of each worker that died (its metrics gauges go with it).
        self.on_worker_exit = on_worker_exit
        self.options = {k: v for k, v in options.items() if k != "workers"}
        self.count = workers
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.started_at: list[float] = []
        self.quick_failures = 0
        self.exit = threading.Event()

    def _start(self) -> Any:
        process = self.context.Process(
            target=run_worker, args=(self.app, self.options), daemon=False
        )
        process.start()
        return process

    def run(self) -> int:
        check_port_free(self.options["host"], self.options["port"])
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.exit.set())
        for _ in range(self.count):
            self.processes.append(self._start())
            self.started_at.append(time.monotonic())
        log.info(
            "gateway: %d workers on %s:%d, one SO_REUSEPORT socket each",
            self.count,
            self.options["host"],
            self.options["port"],
        )
        code = 0
        while not self.exit.wait(WATCH_INTERVAL_S):
            if not self._keep_alive():
                code = 3
                break
        self._stop()
        return code

    def _keep_alive(self) -> bool:
        for i, process in enumerate(self.processes):
            if process.is_alive():
                continue
            lived_s = time.monotonic() - self.started_at[i]
            log.warning("gateway worker %s exited with %s", process.pid, process.exitcode)
            if self.on_worker_exit is not None:
                self.on_worker_exit(process.pid)
            if lived_s < STARTUP_GRACE_S:
                self.quick_failures += 1
                if self.quick_failures >= STARTUP_FAILURES_MAX:
                    log.error("gateway workers keep failing at start; stopping")
                    return False
            else:
                self.quick_failures = 0
            self.processes[i] = self._start()
            self.started_at[i] = time.monotonic()
        return True

    def _stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def serve(
    options: dict[str, Any],
    app: str = APP,
    on_worker_exit: Callable[[int], None] | None = None,
) -> None:
    """Run `app` (a factory) with options["workers"] processes (one: in this process)."""
    workers = int(options.get("workers", 1))
    if workers <= 1 or not supported():
        uvicorn.run(app, factory=True, **options)
        return
    sys.exit(Supervisor(app, options, workers, on_worker_exit).run())
