"""The same scripts on a real Redis Cluster: three redis-server processes in
cluster mode, started and stopped by this test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from metering import accounts, credits, debits, reservations, sweeper
from metering.rate_card import RateCard
from metering.store import open_store
from tests.conftest import RATE_CARD, free_port, test_settings

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    if not REDIS_SERVER or not REDIS_CLI:
        pytest.fail(
            "redis-server and redis-cli are needed for the cluster test (./dev test installs them)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="metering-cluster-"))
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        REDIS_SERVER,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait_ping(port)
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = redis_sync.Redis(port=ports[0]).cluster("info")
            if info.get("cluster_state") == "ok":
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("cluster did not become ok")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis_sync.Redis(port=port).ping():
                return
        except redis_sync.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError(f"redis on {port} did not start")


async def test_scripts_run_unchanged_on_a_redis_cluster(cluster_ports: list[int]) -> None:
    settings = test_settings(
        redis_url=f"redis://127.0.0.1:{cluster_ports[0]}/0", redis_cluster=True
    )
    store = await open_store(settings)
    try:
        ids = [f"cl-{i}" for i in range(30)]
        nodes = {store.redis.get_node_from_key(store.account_keys(a).account).port for a in ids}
        assert len(nodes) == 3  # the accounts really are spread over all three nodes
        rate_card = RateCard.parse(RATE_CARD)
        for a in ids:
            await accounts.create_account(store, a, rate_card)
            await credits.add_funds(store, a, "c1", 100_000, "ops_credit", "cluster")
        # Concurrent debits on one account still never overspend.
        hot = ids[0]
        results = await asyncio.gather(
            *(debits.message(store, hot, f"m{i}", "outbound") for i in range(20)),
            return_exceptions=True,
        )
        assert (
            sum(1 for r in results if not isinstance(r, Exception)) == 13
        )  # 13 * 7,500 <= 100,000
        for a in ids[1:]:
            grant = await reservations.reserve(store, a, "k", "outbound")
            assert grant.granted_seconds > 0
            charge = await reservations.commit(store, a, "k", 30)
            assert charge.charged_micros == 5_000
        view = await accounts.get_account(store, ids[5])
        assert view.balance_micros == 95_000 and view.seq == 2
        assert await sweeper.expire_due_reservations(store) == 0
        # A failed-over or restarted node forgets its scripts: the next call reloads them.
        for port in cluster_ports:
            redis_sync.Redis(port=port).script_flush()
        charge2 = await debits.message(store, ids[7], "after-flush", "outbound")
        assert charge2.balance_micros == 95_000 - 7_500
        assert await sweeper.expire_due_reservations(store) == 0
    finally:
        await store.redis.aclose()
