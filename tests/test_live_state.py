"""What the pages show besides the balance reaches open sockets as it changes:
card deleted (recharge off), a declined automatic recharge in words, since when
a recharge is pending; and the pages' Content-Security-Policy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from devkit.testing import GatewayProcess
from gateway.csp import content_security_policy
from metering.payments.recharge_worker import RechargeWorker
from metering.settings import Settings
from metering.store import Store
from tests.conftest import OPS, SWITCH
from tests.fixtures_payments import set_up_recharge

USD = 1_000_000
LIVE_MS_MAX = 1_000


def ws_url(gateway: GatewayProcess, path: str) -> str:
    return gateway.url.replace("http://", "ws://") + path


async def frame_where(
    ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """The first frame (or ops update row) that `wanted` accepts."""
    deadline = time.monotonic() + timeout_s
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        for item in frame.get("updates", [frame]):
            if wanted(item):
                return dict(item)


async def card_and_recharge(
    http: httpx.AsyncClient, pm: str, balance_micros: int
) -> tuple[str, dict[str, str], str]:
    account_id, auth = await set_up_recharge(http, pm, balance_micros, "state@example.com")
    return account_id, auth, auth["Authorization"].split()[1]


async def test_deleting_the_card_tells_open_pages_recharge_is_off(pay_gateway, pay_http):
    account_id, auth, token = await card_and_recharge(pay_http, "pm_card_visa", 20 * USD)
    customer = ws_url(pay_gateway, f"/v1/accounts/{account_id}/live?token={token}")
    ops = ws_url(pay_gateway, "/v1/ops/live?token=test-ops-token")
    async with connect(customer) as page, connect(ops, max_size=None) as ops_page:
        snapshot = json.loads(await page.recv())
        assert snapshot["account"]["recharge"]["enabled"] is True
        assert snapshot["account"]["card"]["last4"] == "4242"
        r = await pay_http.delete(f"/v1/accounts/{account_id}/card", headers=auth)
        assert r.status_code == 200, r.text
        deleted = time.monotonic()

        def is_state(f: dict[str, Any]) -> bool:
            return f.get("account_id") == account_id and f.get("event") == "account"

        frame = await frame_where(page, is_state, LIVE_MS_MAX / 1000)
        row = await frame_where(ops_page, is_state, LIVE_MS_MAX / 1000)
        assert (time.monotonic() - deleted) * 1000 < LIVE_MS_MAX
    for f in (frame, row):
        assert f["card"] is None
        assert f["recharge"]["enabled"] is False
        assert f["recharge"]["amount_micros"] == 60 * USD


async def test_a_declined_recharge_reaches_open_pages_in_words(
    pay_gateway, pay_http, worker: RechargeWorker, pay_store: Store
):
    account_id, auth, token = await card_and_recharge(
        pay_http, "pm_card_chargeCustomerFail", 10 * USD + 7_500
    )
    url = ws_url(pay_gateway, f"/v1/accounts/{account_id}/live?token={token}")
    async with connect(url) as page:
        await page.recv()  # snapshot
        for i in range(2):  # the second text takes the balance below the threshold
            r = await pay_http.post(
                "/v1/messages",
                headers=SWITCH,
                json={"account_id": account_id, "message_id": f"m{i}", "direction": "outbound"},
            )
            assert r.status_code == 200, r.text
        crossed = await frame_where(
            page, lambda f: f.get("recharge_pending") is True, LIVE_MS_MAX / 1000
        )
        stored = await pay_store.redis.hget(
            pay_store.account_keys(account_id).account, "recharge_pending_since_us"
        )
        assert crossed["recharge_pending_since_us"] == int(stored)
        assert crossed["recharge_pending_since_us"] == crossed["at_us"]
        deadline = time.monotonic() + 10
        while not await pay_store.redis.hget(
            pay_store.account_keys(account_id).account, "recharge_last_failure"
        ):
            assert time.monotonic() < deadline, "the worker never tried"
            await worker.step()
        failed = time.monotonic()
        frame = await frame_where(page, lambda f: f.get("event") == "account", LIVE_MS_MAX / 1000)
        assert (time.monotonic() - failed) * 1000 < LIVE_MS_MAX
    recharge = frame["recharge"]
    assert recharge["last_failure"] == "Your card was declined."
    assert recharge["pending"] is True
    assert recharge["pending_since_us"] == int(stored)
    assert recharge["last_failure_at_us"] > recharge["pending_since_us"]
    # The next attempt is recharge_decline_retry_s later (2 s in these tests).
    wait_us = recharge["next_attempt_at_us"] - recharge["last_failure_at_us"]
    assert 1_500_000 < wait_us < 3_000_000, wait_us
    r = await pay_http.get(f"/v1/accounts/{account_id}", headers=OPS)
    assert r.json()["recharge"] == recharge
    # Recharge off, so later tests' workers do not keep retrying this card.
    await pay_http.delete(f"/v1/accounts/{account_id}/card", headers=auth)


async def test_pages_send_a_strict_content_security_policy(gateway, http, settings: Settings):
    expected = content_security_policy(settings)
    stripe_origin = settings.stripe_js_url.split("/js.stripe.com")[0]
    assert f"script-src 'self' {stripe_origin};" in expected
    assert "unsafe-inline" not in expected and "unsafe-eval" not in expected
    assert "frame-ancestors 'none'" in expected and "default-src 'none'" in expected
    for path in ("/dashboard", "/ops"):
        r = await http.get(path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == expected
        assert r.headers["cache-control"] == "no-store"
        # Nothing inline that the policy would block.
        assert "<script>" not in r.text and " style=" not in r.text and "onclick" not in r.text


def test_stripe_hosted_js_also_allows_the_hosts_stripe_documents(settings: Settings):
    policy = content_security_policy(settings.replace(stripe_js_url="https://js.stripe.com/v3/"))
    assert "script-src 'self' https://js.stripe.com;" in policy
    assert "connect-src 'self' https://js.stripe.com https://api.stripe.com;" in policy
    assert "frame-src https://js.stripe.com https://hooks.stripe.com;" in policy


async def test_a_credit_above_the_threshold_ends_a_waiting_recharge_at_once(
    pay_http, pay_store: Store, pay_db, stripe_client, pay_settings
):
    """After a decline the next attempt waits hours; money added meanwhile (ops
    credit or pay now) that lifts the balance back above the threshold ends the
    waiting recharge now, so no page says "pending" for hours."""
    slow_retry = pay_settings.replace(recharge_decline_retry_s=3_600.0)
    worker = RechargeWorker(pay_store, pay_db, stripe_client, slow_retry, consumer="lift")
    await worker.ensure_groups()
    account_id, auth, _token = await card_and_recharge(
        pay_http, "pm_card_chargeCustomerFail", 10 * USD + 7_500
    )
    for i in range(2):
        r = await pay_http.post(
            "/v1/messages",
            headers=SWITCH,
            json={"account_id": account_id, "message_id": f"m{i}", "direction": "outbound"},
        )
        assert r.status_code == 200, r.text
    keys = pay_store.account_keys(account_id)
    deadline = time.monotonic() + 10
    while not await pay_store.redis.hget(keys.account, "recharge_last_failure"):
        assert time.monotonic() < deadline, "the worker never tried"
        await worker.step()
    attempts = "SELECT count(*) FROM recharge_attempts WHERE account_id = $1"
    assert await pay_db.fetchval(attempts, account_id) == 1
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/credits",
        headers=OPS,
        json={"credit_id": "lift", "amount_micros": 50 * USD, "reason": "goodwill"},
    )
    assert r.status_code == 200, r.text
    for _ in range(5):
        await worker.step()
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["recharge"]["pending"] is False, view["recharge"]
    assert await pay_db.fetchval(attempts, account_id) == 1  # ended without a charge
    status = await pay_db.fetchval(
        "SELECT status FROM recharge_episodes WHERE account_id = $1", account_id
    )
    assert status == "ended"
    await pay_http.delete(f"/v1/accounts/{account_id}/card", headers=auth)
