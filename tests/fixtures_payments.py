"""Fixtures of the payments tests: a real local Stripe server (localstripe plus
tests/stripe_local.py) and a real SMTP server (aiosmtpd), each on a free port,
the payments tables migrated into the suite's own Postgres database, and a
gateway process wired to all of them whose log is kept for inspection."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import stripe
from aiosmtpd.controller import Controller

from devkit.testing import RATE_CARD, GatewayProcess, Mailbox, StripeServer, free_port
from metering.ledger.migrate import migrate
from metering.payments.recharge_worker import RechargeWorker
from metering.payments.stripe_client import build_stripe_client, close_stripe_client
from metering.settings import Settings
from metering.store import Store, open_store
from tests.conftest import OPS, new_account_id, test_settings

WEBHOOK_SECRET = "whsec_test_payments_secret"
STRIPE_KEY = "sk_test_payments"
# Each event is delivered to two registered endpoints, both this gateway: every
# webhook in these tests arrives twice.
WEBHOOK_ENDPOINT_IDS = ("first", "second")


class PaymentsGateway(GatewayProcess):
    """A real `python -m gateway` at info level, its output kept in a log file
    (the card-data test reads it)."""

    def __init__(self, settings: Settings) -> None:
        self.log = Path(tempfile.mkstemp(prefix="payments-gateway-", suffix=".log")[1])
        super().__init__(settings.replace(log_level="info"), log_path=self.log)

    def stop(self) -> None:
        super().stop()
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeServer]:
    server = StripeServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    yield box
    controller.stop()


@pytest.fixture(scope="session")
def pay_settings(stripe_server: StripeServer, mailbox: Mailbox) -> Settings:
    return test_settings(
        stripe_api_base=stripe_server.url,
        stripe_js_url=stripe_server.url + "/js.stripe.com/v3/",
        stripe_api_key=STRIPE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        smtp_port=mailbox.port,  # type: ignore[attr-defined]
        recharge_decline_retry_s=2.0,
        recharge_backoff_base_s=0.3,
        recharge_backoff_max_s=1.0,
        recharge_transient_retries_max=3,
        recharge_poll_interval_s=0.05,
        # Short windows, so what must hold "forever" is tried after they passed.
        idempotency_window_s=1,
        call_late_commit_window_s=1,
        recharge_repair_grace_s=0.5,
        recharge_repair_interval_s=0.2,
    )


@pytest.fixture(scope="session")
async def pay_db(pay_settings: Settings) -> AsyncIterator[Any]:
    await migrate(pay_settings.database_url, create_database=True)
    pool = await asyncpg.create_pool(pay_settings.database_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


def register_webhook(stripe_server: StripeServer, endpoint_id: str, url: str) -> None:
    """Point one of the local Stripe's webhook endpoints at `url` (again)."""
    httpx.post(
        f"{stripe_server.url}/_config/webhooks/{endpoint_id}",
        data={"url": url, "secret": WEBHOOK_SECRET},
    ).raise_for_status()


@pytest.fixture(scope="session")
def pay_gateway(
    pay_settings: Settings,
    pay_db: Any,
    stripe_server: StripeServer,
) -> Iterator[PaymentsGateway]:
    gw = PaymentsGateway(pay_settings)
    for endpoint_id in WEBHOOK_ENDPOINT_IDS:
        register_webhook(stripe_server, endpoint_id, gw.url + "/v1/stripe/webhook")
    yield gw
    gw.stop()


@pytest.fixture
async def pay_http(pay_gateway: PaymentsGateway) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=pay_gateway.url, limits=limits, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def pay_store(pay_settings: Settings) -> AsyncIterator[Store]:
    s = await open_store(pay_settings)
    yield s
    await s.redis.aclose()


@pytest.fixture
async def stripe_client(pay_settings: Settings) -> AsyncIterator[stripe.StripeClient]:
    client = build_stripe_client(pay_settings)
    yield client
    await close_stripe_client(client)


@pytest.fixture
async def worker(
    pay_store: Store, pay_db: Any, stripe_client: stripe.StripeClient, pay_settings: Settings
) -> RechargeWorker:
    w = RechargeWorker(pay_store, pay_db, stripe_client, pay_settings, consumer="tests")
    await w.ensure_groups()
    return w


async def customer_account(
    http: httpx.AsyncClient, balance_micros: int = 0, rate_card: dict[str, int] | None = None
) -> tuple[str, dict[str, str]]:
    """A new account (optionally funded by an ops credit) and its customer auth header."""
    account_id = new_account_id("pay")
    r = await http.post(
        "/v1/accounts",
        headers=OPS,
        json={"account_id": account_id, "rate_card": rate_card or RATE_CARD},
    )
    assert r.status_code == 201, r.text
    if balance_micros:
        r = await http.post(
            f"/v1/accounts/{account_id}/credits",
            headers=OPS,
            json={"credit_id": "initial", "amount_micros": balance_micros, "reason": "test funds"},
        )
        assert r.status_code == 200, r.text
    r = await http.post(
        f"/v1/accounts/{account_id}/tokens", headers=OPS, json={"label": "dashboard"}
    )
    assert r.status_code == 201, r.text
    return account_id, {"Authorization": f"Bearer {r.json()['token']}"}


async def set_up_recharge(
    http: httpx.AsyncClient,
    pm: str,
    balance_micros: int,
    email: str,
    amount_micros: int = 60_000_000,
    threshold_micros: int = 10_000_000,
) -> tuple[str, dict[str, str]]:
    """A customer account with a card (`pm`) and automatic recharge on."""
    account_id, auth = await customer_account(http, balance_micros)
    r = await http.put(
        f"/v1/accounts/{account_id}/card", headers=auth, json={"payment_method_id": pm}
    )
    assert r.status_code == 200, r.text
    r = await http.put(
        f"/v1/accounts/{account_id}/recharge",
        headers=auth,
        json={
            "amount_micros": amount_micros,
            "threshold_micros": threshold_micros,
            "failure_email": email,
            "enabled": True,
        },
    )
    assert r.status_code == 200, r.text
    return account_id, auth


async def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.1) -> None:
    """Poll an async predicate until it holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def put_recharge(
    http: httpx.AsyncClient,
    account_id: str,
    auth: dict[str, str],
    amount_micros: int,
    threshold_micros: int,
    email: str,
    enabled: bool = True,
) -> httpx.Response:
    """Save automatic recharge settings as the customer's page does; the answer."""
    return await http.put(
        f"/v1/accounts/{account_id}/recharge",
        headers=auth,
        json={
            "amount_micros": amount_micros,
            "threshold_micros": threshold_micros,
            "failure_email": email,
            "enabled": enabled,
        },
    )


async def post_signed_event(http: httpx.AsyncClient, event: dict[str, Any]) -> httpx.Response:
    """A webhook delivery of `event`, signed now with the endpoint's secret."""
    payload = orjson.dumps(event)
    now = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), b"%d." % now + payload, hashlib.sha256)
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": f"t={now},v1={mac.hexdigest()}",
    }
    return await http.post("/v1/stripe/webhook", content=payload, headers=headers)


def charges_of(stripe_server: StripeServer, account_id: str) -> int:
    """PaymentIntents Stripe created for one account (declined ones included):
    counted per account, so charges other tests' episodes make meanwhile do not
    count."""
    return sum(
        1
        for i in stripe_server.payment_intents(STRIPE_KEY)
        if (i.get("metadata") or {}).get("account_id") == account_id
    )
