"""Prometheus metrics: exact counts across two gateway processes, the totals
recorded per process and exposed exactly as prometheus_client's own metric
objects would expose them, request ids, health and the ops status report."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devkit.testing import (
    RATE_CARD,
    GatewayProcess,
    RedisServer,
    TcpProxy,
    url_port,
    url_with_port,
)
from metering import accounts
from metering.heartbeats import HeartbeatWriter
from metering.metrics import HTTP_BUCKETS_S, Metrics
from metering.metrics_export import MULTIPROC_ENV, MultiprocessFiles, render
from metering.rate_card import RateCard
from metering.store import Store
from tests.conftest import OPS, SWITCH, TEST_DATABASE_URL, new_account_id, test_settings
from tests.fixtures_ledger import postgres_schema


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def request_count(
    scraped: dict[Any, float], route: str, outcome: str, method: str = "POST"
) -> float:
    key = (
        "metering_http_request_duration_seconds_count",
        (("method", method), ("outcome", outcome), ("route", route)),
    )
    return scraped.get(key, 0.0)


# ---------------------------------------------------------------- the must-show


@pytest.fixture(scope="module")
def two_process_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("metrics")
    gateway = GatewayProcess(
        test_settings(workers=2, metrics_dir=str(directory), metrics_flush_interval_s=0.1)
    )
    yield gateway
    gateway.stop()


async def test_metrics_count_a_known_workload_exactly_across_two_gateway_processes(
    two_process_gateway: GatewayProcess,
) -> None:
    gateway = two_process_gateway
    n_debits, m_refusals, k_calls = 120, 37, 25
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=30) as http:
        rich, broke = new_account_id("rich"), new_account_id("broke")
        for account_id in (rich, broke):
            r = await http.post(
                "/v1/accounts", headers=OPS, json={"account_id": account_id, "rate_card": RATE_CARD}
            )
            assert r.status_code == 201, r.text
        r = await http.post(
            f"/v1/accounts/{rich}/credits",
            headers=OPS,
            json={"credit_id": "c", "amount_micros": 100_000_000, "reason": "test"},
        )
        assert r.status_code == 200

        async def post(path: str, body: dict[str, Any], want: int) -> None:
            r = await http.post(path, headers=SWITCH, json=body)
            assert r.status_code == want, r.text

        work = [
            post(
                "/v1/messages",
                {"account_id": rich, "message_id": f"m{i}", "direction": "outbound"},
                200,
            )
            for i in range(n_debits)
        ]
        work += [
            post(
                "/v1/messages",
                {"account_id": broke, "message_id": f"x{i}", "direction": "outbound"},
                402,
            )
            for i in range(m_refusals)
        ]
        work += [
            post(
                "/v1/calls", {"account_id": rich, "call_id": f"c{i}", "direction": "outbound"}, 200
            )
            for i in range(k_calls)
        ]
        await asyncio.gather(*work)

        # Every process flushes every 0.1 s; the answering one flushes before it sums.
        deadline = time.monotonic() + 15
        while True:
            r = await http.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            scraped = samples(r.text)
            got = (
                request_count(scraped, "/v1/messages", "allowed"),
                request_count(scraped, "/v1/messages", "refused"),
                request_count(scraped, "/v1/calls", "allowed"),
                scraped.get(("metering_reservations_total", (("event", "opened"),)), 0.0),
            )
            want = (n_debits, m_refusals, k_calls, k_calls)
            assert all(g <= w for g, w in zip(got, want, strict=True)), got  # never more
            if got == want or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert got == want
    # Both processes served and wrote: two pids' histogram files.
    directory = gateway.settings.metrics_dir
    pids = {re.search(r"_(\d+)\.db$", p).group(1) for p in glob.glob(f"{directory}/histogram_*.db")}  # type: ignore[union-attr]
    assert len(pids) == 2, pids
    # The debit script's round trips (one per debit, refusal and reserve) and the
    # totals' shape: buckets cumulative, +Inf equal to _count.
    scripts = scraped[("metering_redis_script_duration_seconds_count", (("script", "debit"),))]
    assert scripts >= n_debits + m_refusals
    route = (("method", "POST"), ("outcome", "allowed"), ("route", "/v1/messages"))
    inf = scraped[("metering_http_request_duration_seconds_bucket", (("le", "+Inf"), *route))]
    assert inf == n_debits
    # No account id ever appears in the exposition.
    assert rich not in r.text and broke not in r.text


async def test_a_dead_gateway_worker_leaves_its_counts_and_takes_its_gauges(
    two_process_gateway: GatewayProcess,
) -> None:
    directory = two_process_gateway.settings.metrics_dir
    gauge_files = sorted(glob.glob(f"{directory}/gauge_livesum_*.db"))
    assert len(gauge_files) == 2
    async with httpx.AsyncClient(base_url=two_process_gateway.url, timeout=30) as http:
        before = samples((await http.get("/metrics")).text)
        victim = int(re.search(r"_(\d+)\.db$", gauge_files[0]).group(1))  # type: ignore[union-attr]
        os.kill(victim, 9)  # a worker this test's gateway started
        gone = Path(gauge_files[0])
        deadline = time.monotonic() + 20
        while gone.exists() and time.monotonic() < deadline:  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.1)
        assert not gone.exists(), "the dead worker's gauges stayed"  # noqa: ASYNC240
        after = samples((await http.get("/metrics")).text)
    for key, value in before.items():
        if key[0] == "metering_http_request_duration_seconds_count" and "/v1/" in str(key):
            assert after.get(key, 0) >= value, key  # counts never go backwards


# ---------------------------------------------------------------- totals and their exposition


def test_totals_expose_exactly_what_prometheus_client_objects_would() -> None:
    ours = Metrics()
    registry = CollectorRegistry()
    theirs_h = Histogram(
        "metering_http_request_duration_seconds",
        ours.http_requests.help,
        ("route", "method", "outcome"),
        buckets=HTTP_BUCKETS_S,
        registry=registry,
    )
    theirs_c = Counter(
        "metering_reservations_total", ours.reservations.help, ("event",), registry=registry
    )
    values = [0.0005, 0.0001, 0.001, 0.003, 0.0025, 7.0, 11.0, 0.0]  # bounds are inclusive
    for v in values:
        ours.http_requests.observe(("/v1/messages", "POST", "allowed"), v)
        theirs_h.labels("/v1/messages", "POST", "allowed").observe(v)
    for _ in range(3):
        ours.reservations.inc(("opened",))
        theirs_c.labels("opened").inc()
    mine = {k: v for k, v in samples(render(ours, None).decode()).items() if "_created" not in k[0]}
    expected = {
        k: v
        for k, v in samples(generate_latest(registry).decode()).items()
        if "_created" not in k[0]
    }
    assert mine == expected


def test_flushed_files_sum_across_processes_like_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    one, two = Metrics(), Metrics()
    for m, n in ((one, 3), (two, 4)):
        for i in range(n):
            m.http_requests.observe(("/v1/calls", "POST", "allowed"), 0.001 * i)
            m.reservations.inc(("opened",))
    files = MultiprocessFiles(one, str(tmp_path))
    files.flush()
    assert files.flush() == 0  # nothing changed: nothing written
    one.reservations.inc(("opened",))
    assert files.flush() == 1
    files.close()
    # A second "process": another file, as a second pid would write.
    other = MultiprocessFiles(two, str(tmp_path), pid=999_999_001)
    other.flush()
    other.close()
    scraped = samples(render(Metrics(), str(tmp_path)).decode())
    assert scraped[("metering_reservations_total", (("event", "opened"),))] == 8
    key = (("method", "POST"), ("outcome", "allowed"), ("route", "/v1/calls"))
    assert scraped[("metering_http_request_duration_seconds_count", key)] == 7


def test_recording_costs_well_under_a_microsecond() -> None:
    m = Metrics()
    key = ("/v1/messages", "POST", "allowed")
    n = 100_000
    began = time.perf_counter()
    for _ in range(n):
        m.http_requests.observe(key, 0.0012)
    observe_us = (time.perf_counter() - began) / n * 1e6
    began = time.perf_counter()
    for _ in range(n):
        m.reservations.inc(("opened",))
    inc_us = (time.perf_counter() - began) / n * 1e6
    print(f"histogram observe {observe_us:.2f} us, counter inc {inc_us:.2f} us")
    assert observe_us < 10 and inc_us < 10  # a loaded CI machine; measured 0.4 and 0.1


# ---------------------------------------------------------------- request ids


async def test_a_request_id_is_kept_or_made_and_returned(
    two_process_gateway: GatewayProcess,
) -> None:
    async with httpx.AsyncClient(base_url=two_process_gateway.url) as http:
        mine = await http.get("/v1/accounts/nobody", headers={**OPS, "X-Request-Id": "sw-42.a:b"})
        assert mine.status_code == 404 and mine.headers["x-request-id"] == "sw-42.a:b"
        hostile = await http.get("/livez", headers={"X-Request-Id": "<script>;" + "x" * 100})
        made = hostile.headers["x-request-id"]
        assert made and "x" * 10 not in made and "<" not in made
        again = await http.get("/livez")
        assert again.headers["x-request-id"] not in (made, "")
        switch = await http.post(
            "/v1/messages",
            headers={**SWITCH, "X-Request-Id": "switch-1"},
            json={"account_id": "nobody", "message_id": "m", "direction": "outbound"},
        )
        assert switch.status_code == 404 and switch.headers["x-request-id"] == "switch-1"


async def test_the_request_id_is_on_the_log_lines_of_its_request(
    tmp_path: Path, store: Store
) -> None:
    # Postgres unreachable: saving alert settings logs a warning while it is served.
    closed = TcpProxy("127.0.0.1", url_port(TEST_DATABASE_URL))
    closed.stop()
    account_id = new_account_id()
    await accounts.create_account(store, account_id, RateCard.parse(RATE_CARD))
    log_path = tmp_path / "gateway.log"
    settings = test_settings(
        database_url=url_with_port(TEST_DATABASE_URL, closed.port), database_timeout_s=1.0
    )
    gateway = GatewayProcess(settings, log_path=log_path)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            r = await http.put(
                f"/v1/accounts/{account_id}/alerts",
                headers={**OPS, "X-Request-Id": "trace-me-7"},
                json={"low_balance_threshold_micros": 1_000_000, "email": "a@example.com"},
            )
            assert r.status_code == 503 and r.headers["x-request-id"] == "trace-me-7"
    finally:
        gateway.stop()
        closed.close()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    traced = [line for line in lines if line.get("request_id") == "trace-me-7"]
    assert traced, lines[-5:]
    assert "database unavailable" in traced[0]["message"] and traced[0]["level"] == "warning"


# ---------------------------------------------------------------- health and status


async def until(
    http: httpx.AsyncClient, done: Any, path: str = "/readyz", timeout_s: float = 15
) -> httpx.Response:
    """GET path until done(answer) (a loaded machine is slow to reconnect); the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await http.get(path)
        if done(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


@pytest.fixture
async def private_world(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, str]]:
    redis = RedisServer()
    try:
        async with postgres_schema() as database_url:
            yield redis, database_url
    finally:
        redis.stop()


async def test_livez_readyz_and_a_schema_that_falls_behind(
    private_world: tuple[RedisServer, str],
) -> None:
    redis, database_url = private_world
    proxy = TcpProxy("127.0.0.1", url_port(TEST_DATABASE_URL))
    proxy.start()
    settings = test_settings(
        redis_url=redis.url,
        database_url=url_with_port(database_url, proxy.port),
        readiness_schema_check_interval_s=0.1,
        database_timeout_s=3.0,
    )
    gateway = GatewayProcess(settings)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            live = await http.get("/livez")
            assert live.status_code == 200 and live.json()["status"] == "alive"
            ready = await until(http, lambda r: r.json()["checks"]["schema"]["state"] == "migrated")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["schema"]["state"] == "migrated", ready.text
            # A restarted Redis without the scripts: loaded again, still ready.
            import redis as redis_sync

            client = redis_sync.Redis.from_url(redis.url)
            client.script_flush()
            client.close()
            ready = (await http.get("/readyz")).json()
            assert ready["status"] == "ready" and ready["checks"]["scripts"]["reloaded"] > 0
            # Postgres away: still ready (the authorize path never uses it).
            proxy.stop()
            await asyncio.sleep(0.2)
            away = await http.get("/readyz")
            assert away.status_code == 200, away.text
            assert away.json()["checks"]["schema"]["state"] == "unavailable"
            # Back with a migration missing (a deploy ahead of `migrate`): not ready.
            import asyncpg

            conn = await asyncpg.connect(database_url)
            await conn.execute(
                "DELETE FROM schema_migrations "
                "WHERE name = (SELECT max(name) FROM schema_migrations)"
            )
            await conn.close()
            proxy.start()
            behind = await until(http, lambda r: r.status_code == 503)
            assert behind.status_code == 503, behind.text
            body = behind.json()
            assert body["status"] == "not_ready"
            assert "python -m metering migrate" in body["checks"]["schema"]["fix"]
    finally:
        gateway.stop()
        proxy.close()


async def test_ops_status_reports_lag_workers_backlog_and_versions(
    two_process_gateway: GatewayProcess,
) -> None:
    from metering.store import open_store

    settings = two_process_gateway.settings
    store = await open_store(settings)
    stop = asyncio.Event()
    beat = HeartbeatWriter(store.redis, settings, "ledger-writer", f"test-{uuid.uuid4().hex[:6]}")
    task = asyncio.create_task(beat.run(stop))
    try:
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=two_process_gateway.url, timeout=30) as http:
            assert (await http.get("/v1/ops/status", headers=SWITCH)).status_code == 403
            assert (await http.get("/v1/ops/status")).status_code == 401
            r = await http.get("/v1/ops/status", headers=OPS)
            assert r.status_code == 200, r.text
            report = r.json()
            scraped = samples((await http.get("/metrics")).text)
    finally:
        stop.set()
        await task
        await store.redis.aclose()
    assert report["versions"]["service"] and report["versions"]["redis"]
    assert report["versions"]["postgres"] and report["versions"]["schema"]["state"] == "migrated"
    assert set(report["ledger_lag"]) == {"entries_behind", "oldest_age_ms", "shards_behind"}
    mine = [w for w in report["workers"] if w["name"] == beat.beat.name]
    assert len(mine) == 1 and mine[0]["kind"] == "ledger-writer" and mine[0]["stale"] is False
    assert set(report["recharge_backlog"]) == {"open_episodes", "due_episodes", "oldest_due_age_s"}
    assert report["gateway"]["pid"] > 0
    assert scraped[("metering_workers_alive", (("kind", "ledger-writer"),))] >= 1
    assert scraped[("metering_redis_up", ())] == 1 and scraped[("metering_postgres_up", ())] == 1
    assert ("metering_recharge_episodes", (("state", "open"),)) in scraped
    assert ("metering_reservations_open", ()) in scraped
