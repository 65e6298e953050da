"""Shared fixtures. The suite works in its own Redis database and its own
Postgres database, never a user's:

    METERING_TEST_REDIS_URL     default redis://127.0.0.1:6379/15
    METERING_TEST_DATABASE_URL  default postgresql://postgres@127.0.0.1:5432/metering_test

Servers are real; a test that needs a gateway gets a real `python -m gateway`
subprocess on a free port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync

from devkit.testing import RATE_CARD, GatewayProcess
from devkit.testing import url_port as url_port  # re-exported for the tests
from devkit.testing import url_with_port as url_with_port
from metering.settings import Settings
from metering.store import Store, open_store

TEST_REDIS_URL = os.environ.get("METERING_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_DATABASE_URL = os.environ.get(
    "METERING_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/metering_test"
)
SWITCH = {"Authorization": "Bearer test-switch-token"}
OPS = {"Authorization": "Bearer test-ops-token"}


def test_settings(**changes: Any) -> Settings:
    base = Settings.from_env({}).replace(
        redis_url=TEST_REDIS_URL,
        database_url=TEST_DATABASE_URL,
        switch_token="test-switch-token",
        ops_token="test-ops-token",
        reservation_sweep_interval_s=0.2,
        # No Stripe behind the plain test gateway (port 9 refuses): the pages'
        # card entry says it is unavailable. Payment tests set the local Stripe's.
        stripe_js_url="http://127.0.0.1:9/js.stripe.com/v3/",
        # Pub/sub channels are global to a Redis server (not per database): a
        # suite's own channel keeps other suites' balance changes out of its sockets.
        live_channel="m:live:test:" + TEST_REDIS_URL.rsplit("/", 1)[-1],
        # Every test is one client address (127.0.0.1) and many try wrong tokens
        # on purpose: the limiter has its own gateway in tests/test_auth_limits.py.
        auth_failures_per_client_max=1_000_000,
        auth_failures_per_token_prefix_max=1_000_000,
    )
    return base.replace(**changes) if changes else base


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="session")
def settings() -> Settings:
    return test_settings()


@pytest.fixture(scope="session", autouse=True)
def clean_test_redis(settings: Settings) -> Iterator[None]:
    """The test database starts empty; it is the suite's own, so flushing it is safe."""
    client = redis_sync.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.close()
    yield


@pytest.fixture(scope="session", autouse=True)
async def migrated_test_database(settings: Settings) -> None:
    """The test Postgres database exists and carries every migration (account
    creation writes through to it)."""

    from metering.ledger.migrate import migrate

    await migrate(settings.database_url, create_database=True)


@pytest.fixture(scope="session")
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = await open_store(settings)
    yield s
    await s.redis.aclose()


@pytest.fixture(scope="session")
def gateway(settings: Settings) -> Iterator[GatewayProcess]:
    process = GatewayProcess(settings)
    yield process
    process.stop()


@pytest.fixture
async def http(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=30) as client:
        yield client


def new_account_id(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def make_account(
    http: httpx.AsyncClient,
    balance_micros: int = 0,
    rate_card: dict[str, int] | None = None,
    **extra: Any,
) -> str:
    """Create an account over the API and credit it; returns its id."""
    account_id = new_account_id()
    r = await http.post(
        "/v1/accounts",
        headers=OPS,
        json={"account_id": account_id, "rate_card": rate_card or RATE_CARD, **extra},
    )
    assert r.status_code == 201, r.text
    if balance_micros:
        r = await http.post(
            f"/v1/accounts/{account_id}/credits",
            headers=OPS,
            json={"credit_id": "initial", "amount_micros": balance_micros, "reason": "test funds"},
        )
        assert r.status_code == 200, r.text
    return account_id


# Area fixture modules, registered for every test file.
pytest_plugins = ["tests.fixtures_payments", "tests.fixtures_pages"]
