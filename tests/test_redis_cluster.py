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

from devkit.testing import RATE_CARD, free_port
from metering import accounts, credits, debits, reservations, sweeper
from metering.rate_card import RateCard
from metering.store import open_store
from tests.conftest import test_settings

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
# A cluster node's bus listens on its port plus this.
CLUSTER_BUS_OFFSET = 10_000


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    if not REDIS_SERVER or not REDIS_CLI:
        pytest.fail(
            "redis-server and redis-cli are needed for the cluster test (./dev test installs them)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="metering-cluster-"))
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(3):
            port, proc = _start_node(workdir)
            ports.append(port)
            procs.append(proc)
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


def _start_node(workdir: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """One cluster-mode redis-server on a free port; another port if that one was
    taken between picking it and binding it (other suites share this machine)."""
    logs: list[str] = []
    for _ in range(5):
        port = free_port()
        while port + CLUSTER_BUS_OFFSET > 65_535:  # the node also listens there
            port = free_port()
        node_dir = workdir / str(port)
        node_dir.mkdir()
        proc = subprocess.Popen(
            [
                str(REDIS_SERVER),
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
                "--logfile",
                str(node_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if redis_sync.Redis(port=port, socket_connect_timeout=1).ping():
                    return port, proc
            except redis_sync.ConnectionError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        log = node_dir / "redis.log"
        logs.append(f"port {port}: " + (log.read_text()[-500:] if log.exists() else "no log"))
    raise TimeoutError("could not start a cluster node:\n" + "\n".join(logs))


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


async def test_ledger_writer_drains_a_redis_cluster(cluster_ports: list[int]) -> None:
    """The writer, trim and lag scripts and reconcile on the cluster."""
    import asyncpg

    from metering.ledger.database import create_pool
    from metering.ledger.lag import ledger_lag
    from metering.ledger.reconcile import reconcile
    from metering.ledger.writer import LedgerWriter
    from tests.fixtures_ledger import Traffic, assert_postgres_matches, postgres_schema

    # The cluster is this module's own: start from empty nodes.
    for port in cluster_ports:
        redis_sync.Redis(port=port).flushall()
    async with postgres_schema() as url:
        settings = test_settings(
            redis_url=f"redis://127.0.0.1:{cluster_ports[0]}/0",
            redis_cluster=True,
            database_url=url,
            shard_count=32,
            ledger_batch_wait_ms=20,
        )
        store = await open_store(settings)
        pool = await create_pool(settings)
        conn = await asyncpg.connect(url)
        try:
            traffic = Traffic(store, seed=5)
            ids = await traffic.make_accounts(pool, 40, 100_000_000)
            await traffic.run(ids, 1_000, concurrency=50)
            assert (await ledger_lag(store)).entries_behind == len(traffic.expected)
            writer = LedgerWriter(store, list(range(32)), "cluster-writer")
            stats = await writer.run(asyncio.Event(), drain=True)
            assert stats.rows_inserted == len(traffic.expected)
            rows = await conn.fetch("SELECT * FROM ledger_entries")
            assert_postgres_matches(
                traffic.expected, {(r["account_id"], r["seq"]): dict(r) for r in rows}
            )
            assert (await ledger_lag(store)).entries_behind == 0
            report = await reconcile(store, conn)
            assert report.ok, [d.line() for d in report.differences]
        finally:
            await conn.close()
            await pool.close()
            await store.redis.aclose()


def _move_slot(slot: int, ports: list[int], owner: int, to_port: int) -> None:
    """Move one hash slot, with its keys, from the node on `owner` to the node on
    `to_port` (what `redis-cli --cluster reshard` does, for one slot)."""
    nodes = {p: redis_sync.Redis(port=p, decode_responses=True) for p in ports}
    ids = {p: c.execute_command("CLUSTER MYID") for p, c in nodes.items()}
    target, source = nodes[to_port], nodes[owner]
    assert source.execute_command("CLUSTER COUNTKEYSINSLOT", slot) > 0
    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[owner])
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
    while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
    for client in nodes.values():
        client.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to_port])
    for client in nodes.values():
        client.close()


async def test_script_calls_are_pipelined_per_node(cluster_ports: list[int]) -> None:
    """Concurrent calls over accounts on all three nodes: one connection and one
    write per node and tick, each caller its own answer; a moved slot (MOVED)
    and flushed scripts (NOSCRIPT) are followed."""
    from redis.cluster import key_slot

    settings = test_settings(
        redis_url=f"redis://127.0.0.1:{cluster_ports[0]}/0", redis_cluster=True
    )
    store = await open_store(settings)
    try:
        pipeline = store.scripts.debit.pipeline
        assert pipeline is not None
        ids = [f"pl-{i}" for i in range(30)]
        rate_card = RateCard.parse(RATE_CARD)
        await asyncio.gather(*(accounts.create_account(store, a, rate_card) for a in ids))
        await asyncio.gather(
            *(credits.add_funds(store, a, "c1", 100_000, "ops_credit", "pl") for a in ids)
        )
        connections = pipeline.connections()
        assert {port for _, port in connections} == set(cluster_ports)
        writes = {a: c.writes for a, c in connections.items()}
        charges = await asyncio.gather(
            *(debits.message(store, a, f"m{i}", "outbound") for i in range(3) for a in ids)
        )
        # One write per node for the 90 calls of the tick.
        assert {a: c.writes - writes[a] for a, c in pipeline.connections().items()} == {
            a: 1 for a in connections
        }
        by_account: dict[str, list[int]] = {}
        for a, charge in zip((a for _ in range(3) for a in ids), charges, strict=True):
            assert charge.item == "sms_outbound" and charge.charged_micros == 7_500
            by_account.setdefault(a, []).append(charge.seq)
        assert all(sorted(seqs) == [2, 3, 4] for seqs in by_account.values())

        # A slot moves to another node: the first call meets MOVED and is sent
        # through redis-py (which follows it); later calls go to the new node.
        moved = ids[3]
        slot = key_slot(store.account_keys(moved).account.encode())
        owner = store.redis.get_node_from_key(store.account_keys(moved).account).port
        to_port = next(p for p in cluster_ports if p != owner)
        _move_slot(slot, cluster_ports, owner, to_port)
        charge = await debits.message(store, moved, "after-move", "outbound")
        assert charge.seq == 5 and charge.balance_micros == 100_000 - 4 * 7_500
        assert pipeline.redirected == 1
        charge = await debits.message(store, moved, "after-move-2", "outbound")
        assert charge.seq == 6 and pipeline.redirected == 1
        assert store.redis.get_node_from_key(store.account_keys(moved).account).port == to_port

        for port in cluster_ports:
            redis_sync.Redis(port=port).script_flush()
        again = await asyncio.gather(
            *(debits.message(store, a, "m-flush", "outbound") for a in ids)
        )
        assert all(c.seq >= 5 and not c.replayed for c in again)
    finally:
        await store.aclose()
