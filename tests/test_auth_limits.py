"""Failed authentication is rate limited per client address and per token
prefix: past the limit, the address (or the prefix) is answered 429 with
Retry-After before any token lookup, an operator sees a log line, and the
counters move. The switch and ops tokens never meet the limiter."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import httpx
import pytest

from devkit.testing import GatewayProcess
from gateway.auth_limits import AuthFailureLimiter
from metering.settings import Settings
from tests.conftest import OPS, SWITCH, make_account
from tests.test_live import customer_token, refused_code

PER_CLIENT = 5
PER_PREFIX = 8
BLOCK_S = 2.0


@pytest.fixture(scope="module")
def guarded_gateway(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp("auth-limits") / "gateway.log"
    process = GatewayProcess(
        settings.replace(
            auth_failures_per_client_max=PER_CLIENT,
            auth_failures_per_token_prefix_max=PER_PREFIX,
            auth_failure_window_s=60.0,
            auth_failure_block_s=BLOCK_S,
        ),
        log_path=log,
    )
    process.log_path = log  # type: ignore[attr-defined]
    yield process
    process.stop()


def client_from(gateway: GatewayProcess, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=gateway.url, transport=transport, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def account(guarded_gateway: GatewayProcess) -> tuple[str, str]:
    """An account of the guarded gateway and a customer token of it."""
    async with httpx.AsyncClient(base_url=guarded_gateway.url) as http:
        account_id = await make_account(http, 1_000_000)
        return account_id, await customer_token(http, account_id)


async def test_an_address_guessing_tokens_is_refused_and_the_switch_is_not(
    guarded_gateway: GatewayProcess, account: tuple[str, str]
) -> None:
    account_id, token = account
    path = f"/v1/accounts/{account_id}"
    async with client_from(guarded_gateway, "127.0.0.2") as guesser:
        for _ in range(PER_CLIENT):
            r = await guesser.get(path, headers=bearer(secrets.token_urlsafe(32)))
            assert r.status_code == 401, r.text
        r = await guesser.get(path, headers=bearer(secrets.token_urlsafe(32)))
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "too_many_auth_failures"
        retry_after = int(r.headers["retry-after"])
        assert 1 <= retry_after <= BLOCK_S
        # While refused, even a valid customer token is not looked at: a guess
        # that happened to be right would answer nothing different.
        r = await guesser.get(path, headers=bearer(token))
        assert r.status_code == 429
        # A websocket from the address is refused the same way.
        code, frames = await refused_code(
            guarded_gateway.url.replace("http://", "ws://") + f"{path}/live?token={token}",
            local_addr=("127.0.0.2", 0),
        )
        assert (code, frames) == (4429, [])
        # The switch and ops tokens never meet the limiter: the money path goes on.
        r = await guesser.post(
            "/v1/messages",
            headers=SWITCH,
            json={"account_id": account_id, "message_id": "during-block", "direction": "inbound"},
        )
        assert r.status_code == 200, r.text
        assert (await guesser.get(path, headers=OPS)).status_code == 200
        # Another address is not refused.
        async with client_from(guarded_gateway, "127.0.0.3") as other:
            assert (await other.get(path, headers=bearer(token))).status_code == 200
        await asyncio.sleep(retry_after + 0.2)
        r = await guesser.get(path, headers=bearer(token))
        assert r.status_code == 200, r.text
    log = guarded_gateway.log_path.read_text()  # type: ignore[attr-defined]
    assert "failed authentications from 127.0.0.2" in log, log[-2000:]
    assert token not in log


async def test_one_token_prefix_guessed_from_many_addresses_is_refused(
    guarded_gateway: GatewayProcess, account: tuple[str, str]
) -> None:
    account_id, token = account
    path = f"/v1/accounts/{account_id}"
    prefix = "Zq" + secrets.token_urlsafe(6)[:6]
    statuses = []
    # Each address stays under its own limit; together they pass the prefix's.
    for n in range(PER_PREFIX + 1):
        async with client_from(guarded_gateway, f"127.0.1.{n + 1}") as guesser:
            r = await guesser.get(path, headers=bearer(prefix + secrets.token_urlsafe(30)))
            statuses.append(r.status_code)
    assert statuses == [401] * PER_PREFIX + [429], statuses
    async with client_from(guarded_gateway, "127.0.2.1") as fresh:
        r = await fresh.get(path, headers=bearer(prefix + secrets.token_urlsafe(30)))
        assert r.status_code == 429 and "retry-after" in r.headers
        # Other tokens from the same fresh address are looked up as usual.
        assert (await fresh.get(path, headers=bearer(token))).status_code == 200
    log = guarded_gateway.log_path.read_text()  # type: ignore[attr-defined]
    assert "failed authentications with tokens starting" in log
    assert prefix not in log  # only its first characters are shown


def test_the_limiter_counts_blocks_and_forgets_old_failures() -> None:
    now = [1000.0]
    settings = Settings.from_env({}).replace(
        auth_failures_per_client_max=2,
        auth_failures_per_token_prefix_max=100,
        auth_failure_window_s=10.0,
        auth_failure_block_s=5.0,
        auth_failure_tracked_max=3,
    )
    limiter = AuthFailureLimiter(settings, clock=lambda: now[0])
    assert limiter.retry_after_s("10.0.0.1", "tok-aaaa") is None
    assert limiter.failed("10.0.0.1", "tok-aaaa-1") is None
    assert limiter.failed("10.0.0.1", "tok-aaaa-2") is None
    assert limiter.failed("10.0.0.1", "tok-aaaa-3") == 5
    assert limiter.retry_after_s("10.0.0.1", "anything") == 5
    now[0] += 2.5
    assert limiter.retry_after_s("10.0.0.1", "anything") == 3
    assert limiter.counts.failed == 3 and limiter.counts.clients_blocked == 1
    limiter.note_refused()
    assert limiter.counts.refused == 1
    now[0] += 3
    assert limiter.retry_after_s("10.0.0.1", "anything") is None
    # Failures older than the window are forgotten.
    now[0] += 20
    assert limiter.failed("10.0.0.1", "x1") is None
    assert limiter.failed("10.0.0.1", "x2") is None
    # The tables never hold more than auth_failure_tracked_max entries each.
    for n in range(10):
        limiter.failed(f"10.0.1.{n}", f"p{n}-token")
    assert len(limiter.clients) <= 3 and len(limiter.prefixes) <= 3
