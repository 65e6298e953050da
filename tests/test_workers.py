"""Several gateway processes share the load evenly (gateway/workers.py): each
worker listens on the port with a socket of its own (SO_REUSEPORT), so a
burst of keep-alive connections is spread by the kernel, not grabbed by the
first worker to wake; a worker that dies is replaced; the supervisor stops
them all; a second gateway on the same port refuses to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devkit.testing import ROOT, GatewayProcess, settings_env
from metering.settings import Settings

CONNECTIONS = 32
ROUNDS = 3


def workers_of(supervisor: int) -> list[int]:
    """The supervisor's worker processes (children running the gateway), read from
    /proc: `ps` cuts its lines at 80 columns into a pipe, and a long checkout path
    pushed "resource_tracker" past the cut."""
    children = []
    for task in Path(f"/proc/{supervisor}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    workers = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # already gone
        if b"resource_tracker" not in cmdline:
            workers.append(pid)
    return workers


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to `port` each process holds (from /proc)."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            established.add(fields[9])  # the socket's inode
    held = {}
    for pid in pids:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in established:
                count += 1
        held[pid] = count
    return held


def wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[GatewayProcess]:
    process = GatewayProcess(settings.replace(workers=2))
    yield process
    process.stop()


async def test_connections_are_spread_over_the_workers(gateway: GatewayProcess) -> None:
    wait_for(lambda: len(workers_of(gateway.proc.pid)) == 2)
    workers = workers_of(gateway.proc.pid)
    for _ in range(ROUNDS):
        # A burst, as a switch or a load balancer opens its pool.
        conns = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(CONNECTIONS))
        )
        deadline = time.monotonic() + 5
        while sum((held := connections_by_process(workers, gateway.port)).values()) < CONNECTIONS:
            assert time.monotonic() < deadline, held
            await asyncio.sleep(0.05)
        # A shared socket gave 26/6, 2/30, 3/29 here; a hash over two sockets
        # falls below 6 of 32 once in 30,000 rounds.
        assert min(held.values()) >= 6, held
        for _, writer in conns:
            writer.close()
        await asyncio.sleep(0.2)


async def test_a_dead_worker_is_replaced_and_the_supervisor_stops_them_all(
    gateway: GatewayProcess,
) -> None:
    wait_for(lambda: len(workers_of(gateway.proc.pid)) == 2)
    first = workers_of(gateway.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(set(workers_of(gateway.proc.pid)) - set(first)) == 1)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(10):  # new connections, whichever worker gets them
            r = await http.get("/healthz", headers={"connection": "close"})
            assert r.status_code == 200
    # A second gateway on the same port refuses instead of sharing it.
    second = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env=settings_env(gateway.settings),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0 and "cannot listen" in second.stderr
    workers = workers_of(gateway.proc.pid)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0
    for pid in workers:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10)
