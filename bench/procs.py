"""Processes the bench starts and stops: its own redis-server, gateway
processes, the bare comparison app, and its own Postgres database.

Everything listens on a free port picked at run time and is stopped by the
handle that started it, so the shared Redis and other databases are never touched.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import redis as redis_sync

from devkit.testing import (
    ROOT,
    START_TIMEOUT_S,
    RedisServer,
    free_port,
    settings_env,
    stop_process,
    wait_for_port,
)
from metering.settings import Settings

SWITCH_TOKEN = "bench-switch-token"
OPS_TOKEN = "bench-ops-token"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / tick


def bench_settings(redis_url: str, database_url: str, **changes: object) -> Settings:
    return Settings.from_env({}).replace(
        redis_url=redis_url,
        database_url=database_url,
        switch_token=SWITCH_TOKEN,
        ops_token=OPS_TOKEN,
        # Every load generator connection (and the push scenario's 1,000 sockets)
        # comes from 127.0.0.1: no per-address cap in the bench.
        **{"http_connections_per_client_max": 0, **changes},
    )


class Server:
    """An HTTP server subprocess on a free port: the gateway or the bare app."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env)
        wait_for_port(port, self.proc)

    def pids(self) -> list[int]:
        """The server's pid and its worker processes' (for the profiler)."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        return [self.proc.pid, *map(int, out)]

    def stop(self) -> None:
        stop_process(self.proc)


def wait_until(
    ready: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[bytes],
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s}s")
        time.sleep(0.05)


def start_gateway(settings: Settings, workers: int) -> Server:
    """`python -m gateway` with the bench's settings, once every worker is ready:
    keep-alive connections stay on the worker that accepted them, so a load
    started while one worker still boots would never reach it. A ready worker
    has subscribed to the live channel."""
    port = free_port()
    env = settings_env(settings.replace(port=port, host="127.0.0.1", workers=workers))
    server = Server([sys.executable, "-m", "gateway"], env, port)
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:

        def subscribed() -> bool:
            return int(client.pubsub_numsub(settings.live_channel)[0][1]) >= workers

        wait_until(subscribed, f"{workers} gateway workers subscribed", server.proc)
    finally:
        client.close()
    return server


def start_bare_app(settings: Settings, workers: int = 1) -> Server:
    """The bare Starlette comparison app (bench/bare_app.py), same server stack,
    once every worker is ready (each opens one Redis connection at start-up)."""
    port = free_port()
    env = settings_env(settings.replace(port=port, host="127.0.0.1", workers=workers))
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        before = len(client.client_list())
        server = Server([sys.executable, "-m", "bench.bare_app"], env, port)

        def connected() -> bool:
            return len(client.client_list()) - before >= workers

        wait_until(connected, f"{workers} bare app workers connected", server.proc)
    finally:
        client.close()
    return server


@contextlib.contextmanager
def started(thing: RedisServer | Server) -> Iterator[RedisServer | Server]:
    try:
        yield thing
    finally:
        thing.stop()


async def ensure_database(database_url: str) -> None:
    """Create the bench's database if it is missing (never drops a database:
    the bench works in its own `bench_*` tables, see bench/postgres_design.py)."""
    base, _, name = database_url.rpartition("/")
    try:
        conn = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(base + "/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        await conn.close()
