"""A Postgres database without the migrations: the gateway refuses to start and
says which command to run; a gateway that started while Postgres was away
answers 503 naming that command (never a 500); the standalone ledger writer
stops with the same message."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from devkit.testing import RATE_CARD, ROOT, GatewayProcess, TcpProxy, free_port, settings_env
from metering.settings import Settings
from tests.conftest import OPS, TEST_DATABASE_URL, test_settings, url_port, url_with_port

COMMAND = "python -m metering migrate"


@pytest.fixture
async def empty_schema() -> AsyncIterator[str]:
    """The URL of a schema of our own with no tables at all."""
    schema = f"bare_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in TEST_DATABASE_URL else "?"
        yield f"{TEST_DATABASE_URL}{sep}search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@contextlib.contextmanager
def gateway_process(settings: Settings) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gateway_refuses_to_start_on_a_database_without_migrations(empty_schema: str) -> None:
    port = free_port()
    settings = test_settings(database_url=empty_schema, port=port, host="127.0.0.1")
    with gateway_process(settings) as proc:
        deadline = time.monotonic() + 30
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the gateway neither started nor refused"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    # It serves: then its first account must not be a 500.
                    r = httpx.post(
                        f"http://127.0.0.1:{port}/v1/accounts",
                        headers=OPS,
                        json={"account_id": "bare", "rate_card": RATE_CARD},
                        timeout=5,
                    )
                    raise AssertionError(f"serving a database without migrations: {r.text}")
            time.sleep(0.1)
        output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode != 0, output
    assert COMMAND in output and "lacks" in output, output


async def test_gateway_started_without_postgres_answers_503_naming_the_command(
    empty_schema: str,
) -> None:
    proxy = TcpProxy("127.0.0.1", url_port(TEST_DATABASE_URL))  # not started: Postgres away
    gateway = GatewayProcess(
        test_settings(database_url=url_with_port(empty_schema, proxy.port), database_timeout_s=2)
    )
    try:
        proxy.start()  # Postgres is back, but nobody migrated it
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            r = await http.post(
                "/v1/accounts", headers=OPS, json={"account_id": "bare", "rate_card": RATE_CARD}
            )
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "database_not_migrated" and COMMAND in r.json()["message"]
    finally:
        gateway.stop()
        proxy.close()


def test_ledger_writer_stops_naming_the_command_on_a_database_without_migrations(
    empty_schema: str,
) -> None:
    import redis as redis_sync

    from devkit.testing import RedisServer
    from metering.keys import ShardKeys, shard_of

    redis_server = RedisServer()
    try:
        settings = test_settings(redis_url=redis_server.url, database_url=empty_schema)
        # One entry for the writer to write.
        shard = ShardKeys(shard_of("bare", settings.shard_count))
        client = redis_sync.Redis.from_url(redis_server.url)
        client.xadd(
            shard.ledger,
            {
                "account_id": "bare",
                "seq": "1",
                "item": "funds_added",
                "amount_micros": "5",
                "balance_after_micros": "5",
                "request_id": "c1",
                "at_us": "1",
                "detail": "",
            },
        )
        client.close()
        done = subprocess.run(
            [sys.executable, "-m", "metering", "ledger-writer", "--drain"],
            cwd=ROOT,
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        redis_server.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    assert COMMAND in done.stderr and "Traceback" not in done.stderr, done.stderr
