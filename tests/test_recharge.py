"""Automatic recharge end to end: debits through the gateway cross the threshold,
the recharge worker charges the card through the real Stripe SDK against the
local Stripe server, credits once, and on a decline records the attempt and
emails the failure address over real SMTP, once per episode."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from devkit.testing import RATE_CARD
from metering.payments.recharge_worker import RechargeWorker
from metering.store import Store
from tests.conftest import SWITCH
from tests.fixtures_payments import (
    Mailbox,
    PaymentsGateway,
    StripeServer,
    charges_of,
    customer_account,
    set_up_recharge,
    wait_until,
)

USD = 1_000_000
SMS_MICROS = RATE_CARD["sms_outbound_micros"]


async def recharge_requests(store: Store, db: Any, account_id: str) -> int:
    """Recharge requests of the account: those still in its shard's stream plus
    those the worker already moved into episodes (and deleted from the stream)."""
    keys = store.account_keys(account_id)
    in_stream = sum(
        1
        for _id, f in await store.redis.xrange(keys.shard.recharge)
        if f["account_id"] == account_id
    )
    moved = await db.fetchval(
        "SELECT count(*) FROM recharge_episodes WHERE account_id = $1", account_id
    )
    return in_stream + int(moved)


async def send_messages(
    http: httpx.AsyncClient, account_id: str, count: int, prefix: str
) -> list[int]:
    async def one(i: int) -> int:
        r = await http.post(
            "/v1/messages",
            headers=SWITCH,
            json={"account_id": account_id, "message_id": f"{prefix}-{i}", "direction": "outbound"},
        )
        return r.status_code

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def account(http: httpx.AsyncClient, account_id: str, auth: dict[str, str]) -> Any:
    r = await http.get(f"/v1/accounts/{account_id}", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


async def attempts(db: Any, account_id: str) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT attempt, outcome, retryable, reason FROM "
            "recharge_attempts WHERE account_id = $1 ORDER BY attempt",
            account_id,
        )
    )


async def run_until(worker: RechargeWorker, predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await worker.step()
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the worker did not get there in time")


async def test_concurrent_debits_crossing_threshold_make_exactly_one_recharge(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    worker: RechargeWorker,
    stripe_server: StripeServer,
    mailbox: Mailbox,
) -> None:
    # 100 texts above the threshold, then 100 more below it: 200 concurrent debits.
    start = 10 * USD + 100 * SMS_MICROS
    email = "concurrent@example.com"
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", start, email)
    statuses = await send_messages(pay_http, account_id, 200, "burst")
    assert statuses == [200] * 200
    view = await account(pay_http, account_id, auth)
    assert view["balance_micros"] == start - 200 * SMS_MICROS
    assert view["recharge"]["pending"] is True
    assert await recharge_requests(pay_store, pay_db, account_id) == 1

    async def credited() -> bool:
        return (await account(pay_http, account_id, auth))["recharge"]["pending"] is False

    await run_until(worker, credited)
    expected = start - 200 * SMS_MICROS + 60 * USD
    assert (await account(pay_http, account_id, auth))["balance_micros"] == expected
    rows = await attempts(pay_db, account_id)
    assert [(r["attempt"], r["outcome"]) for r in rows] == [(1, "succeeded")]
    assert charges_of(stripe_server, account_id) == 1
    # The succeeded webhook arrives twice; more worker rounds run; nothing more is credited.
    intent_id = await pay_db.fetchval(
        "SELECT payment_intent_id FROM payments WHERE "
        "account_id = $1 AND kind = 'automatic_recharge'",
        account_id,
    )

    async def webhooks_in() -> bool:
        return (
            await pay_db.fetchval(
                "SELECT deliveries FROM stripe_webhook_events WHERE object_id = $1", intent_id
            )
            == 2
        )

    await wait_until(webhooks_in)
    for _ in range(3):
        await worker.step()
    assert (await account(pay_http, account_id, auth))["balance_micros"] == expected
    keys = pay_store.account_keys(account_id)
    credits = [
        f
        for _id, f in await pay_store.redis.xrange(keys.shard.ledger)
        if f["account_id"] == account_id and f["item"] == "funds_added"
    ]
    assert [c["amount_micros"] for c in credits] == [str(start), str(60 * USD)]
    assert credits[1]["detail"].startswith("automatic_recharge")
    # One email: the receipt, with its link (no failure notice).
    [receipt] = mailbox.to(email)
    assert receipt["Subject"] == f"Automatic recharge of $60.00 for account {account_id}"
    text = body_of(receipt)
    assert "Visa ending in 4242" in text
    assert f"/receipt?account={account_id}&payment=recharge%3A" in text


async def test_declined_recharge_records_one_failure_and_emails_once(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    worker: RechargeWorker,
    mailbox: Mailbox,
    pay_settings: Any,
) -> None:
    email = "declined@example.com"
    account_id, auth = await set_up_recharge(
        pay_http, "pm_card_chargeCustomerFail", 10 * USD + SMS_MICROS, email
    )
    await send_messages(pay_http, account_id, 2, "low")  # the second goes below 10 USD
    assert await recharge_requests(pay_store, pay_db, account_id) == 1

    async def one_attempt() -> bool:
        return len(await attempts(pay_db, account_id)) == 1

    await run_until(worker, one_attempt)
    failed_at = time.monotonic()
    rows = await attempts(pay_db, account_id)
    assert rows[0]["outcome"] == "failed" and rows[0]["retryable"] is False
    assert "declined" in rows[0]["reason"]
    await wait_until(lambda: _has_mail(mailbox, email), timeout_s=5)
    [message] = mailbox.to(email)
    text = body_of(message)
    assert account_id in message["Subject"] and account_id in text
    assert "$60.00" in text and "declined" in text
    view = await account(pay_http, account_id, auth)
    assert view["balance_micros"] == 10 * USD - SMS_MICROS
    assert "declined" in view["recharge"]["last_failure"]
    assert view["recharge"]["pending"] is True

    # More debits while the episode is open ask for nothing more, and the
    # worker does not try again before recharge_decline_retry_s.
    await send_messages(pay_http, account_id, 5, "more")
    assert await recharge_requests(pay_store, pay_db, account_id) == 1
    retry_s = pay_settings.recharge_decline_retry_s
    while time.monotonic() - failed_at < retry_s - 0.5:
        await worker.step()
        await asyncio.sleep(0.05)
    assert len(await attempts(pay_db, account_id)) == 1

    async def two_attempts() -> bool:
        return len(await attempts(pay_db, account_id)) == 2

    await run_until(worker, two_attempts, timeout_s=retry_s + 3)
    gap_s = await pay_db.fetchval(
        "SELECT extract(epoch FROM max(at) - min(at)) FROM recharge_attempts WHERE account_id = $1",
        account_id,
    )
    assert gap_s >= retry_s, gap_s  # the second attempt waited for the retry rule
    assert len(mailbox.to(email)) == 1  # one email per failure episode
    view = await account(pay_http, account_id, auth)
    assert view["balance_micros"] == 10 * USD - 6 * SMS_MICROS

    # A new card makes the open episode due at once, and it succeeds.
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card", headers=auth, json={"payment_method_id": "pm_card_visa"}
    )
    assert r.status_code == 200

    async def recharged() -> bool:
        return (await account(pay_http, account_id, auth))["recharge"]["pending"] is False

    await run_until(worker, recharged, timeout_s=5)
    view = await account(pay_http, account_id, auth)
    assert view["balance_micros"] == 70 * USD - 6 * SMS_MICROS
    assert view["recharge"]["last_failure"] is None
    assert [r["outcome"] for r in await attempts(pay_db, account_id)] == [
        "failed",
        "failed",
        "succeeded",
    ]


async def test_unreachable_stripe_retries_with_backoff_then_emails_once(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Any,
    mailbox: Mailbox,
) -> None:
    from devkit.testing import free_port
    from metering.payments.stripe_client import build_stripe_client, close_stripe_client

    email = "unreachable@example.com"
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", 10 * USD + SMS_MICROS, email)
    await send_messages(pay_http, account_id, 2, "down")
    # A worker whose Stripe address answers nothing.
    down = pay_settings.replace(
        stripe_api_base=f"http://127.0.0.1:{free_port()}", stripe_max_network_retries=0
    )
    client = build_stripe_client(down)
    try:
        w = RechargeWorker(pay_store, pay_db, client, down, consumer="tests-down")
        await w.ensure_groups()

        async def count_attempts() -> bool:
            rows = await attempts(pay_db, account_id)
            return len(rows) == down.recharge_transient_retries_max

        await run_until(w, count_attempts, timeout_s=10)
    finally:
        await close_stripe_client(client)
    rows = await attempts(pay_db, account_id)
    assert all(r["outcome"] == "failed" and r["retryable"] for r in rows)
    assert "unreachable" in rows[0]["reason"]
    times = [
        r["t"]
        for r in await pay_db.fetch(
            "SELECT extract(epoch FROM at) AS t FROM recharge_attempts "
            "WHERE account_id = $1 ORDER BY attempt",
            account_id,
        )
    ]
    gaps = [float(b - a) for a, b in zip(times, times[1:], strict=False)]
    # Backoff 0.3 s, then 0.6 s (base 0.3, doubled, capped at 1 s).
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and max(gaps) < 2.0, gaps
    # No email for the retries; one when they are exhausted.
    await wait_until(lambda: _has_mail(mailbox, email), timeout_s=5)
    assert len(mailbox.to(email)) == 1
    # In the customer's words; the technical reason stays in recharge_attempts.
    assert "The card processor did not answer." in body_of(mailbox.to(email)[0])


def body_of(message: Any) -> str:
    """The text of a received email, transfer encoding undone."""
    return str(message.get_payload(decode=True).decode())


async def _has_mail(mailbox: Mailbox, address: str) -> bool:
    return bool(mailbox.to(address))


async def test_no_card_number_or_cvc_in_database_logs_or_responses(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    worker: RechargeWorker,
    stripe_server: StripeServer,
    pay_gateway: PaymentsGateway,
    pay_settings: Any,
    caplog: Any,
) -> None:
    import logging
    import subprocess

    caplog.set_level(logging.DEBUG)
    number = "4242424242424242"
    # What Stripe's elements do in the browser: the card goes to Stripe, the
    # page gets a payment method id, and only that id reaches the service.
    async with httpx.AsyncClient(base_url=stripe_server.url) as browser:
        r = await browser.post(
            "/v1/payment_methods",
            auth=("sk_test_browser", ""),
            data={
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "11",
                "card[exp_year]": "2031",
                "card[cvc]": "739",
            },
        )
        assert r.status_code == 200, r.text
        pm = r.json()["id"]
    responses: list[str] = []
    account_id, auth = await customer_account(pay_http, 10 * USD + SMS_MICROS)
    for method, path, body in [
        ("PUT", "card", {"payment_method_id": pm}),
        (
            "PUT",
            "recharge",
            {
                "amount_micros": 60 * USD,
                "threshold_micros": 10 * USD,
                "failure_email": "cards@example.com",
                "enabled": True,
            },
        ),
        ("POST", "payments", {"payment_id": "secret-check", "amount_micros": 5 * USD}),
    ]:
        r = await pay_http.request(
            method, f"/v1/accounts/{account_id}/{path}", headers=auth, json=body
        )
        assert r.status_code == 200, r.text
        responses.append(r.text)
    await send_messages(pay_http, account_id, 1, "secret")  # 15 USD - 1 text: above threshold
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": "x", "amount_micros": 1},
    )
    responses.append(r.text)
    # Spend below the threshold and let the worker recharge with the card.
    r = await pay_http.post(
        "/v1/numbers/purchases",
        headers=SWITCH,
        json={"account_id": account_id, "purchase_id": "n1", "number": "+15550001"},
    )
    responses.append(r.text)
    for _ in range(6):
        r = await pay_http.post(
            "/v1/numbers/purchases",
            headers=SWITCH,
            json={"account_id": account_id, "purchase_id": f"n{_ + 2}", "number": "+15550001"},
        )
        responses.append(r.text)

    async def recharged() -> bool:
        rows = await attempts(pay_db, account_id)
        return bool(rows) and rows[-1]["outcome"] == "succeeded"

    await run_until(worker, recharged)
    view = await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)
    responses.append(view.text)
    assert view.json()["card"]["last4"] == "4242"
    await asyncio.sleep(2.5)  # webhooks delivered and logged

    dump = (
        await asyncio.to_thread(
            subprocess.run,
            ["pg_dump", "--data-only", pay_settings.database_url],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    redis_hash = str(await pay_store.redis.hgetall(pay_store.account_keys(account_id).account))
    places = {
        "database": dump,
        "gateway log": pay_gateway.log.read_text(),
        "worker log": caplog.text,
        "responses": "\n".join(responses),
        "redis": redis_hash,
    }
    # The dump and the hash do hold this card's Stripe id and last four: the search
    # looks where card data would be.
    assert pm in dump and "4242" in dump and pm in redis_hash
    for name, text in places.items():
        assert number not in text, name
        assert number[:6] + number[-4:] not in text.replace(" ", ""), name
        # A word of its own: random Stripe ids may hold the letters (pm_...gcvc9...).
        assert not re.search(r"\bcvc\b", text, re.IGNORECASE), name


async def test_recharge_worker_command_recharges_and_stops_on_sigterm(
    pay_http: httpx.AsyncClient,
    pay_settings: Any,
    pay_db: Any,
) -> None:
    import signal
    import subprocess
    import sys

    from devkit.testing import ROOT, settings_env

    account_id, auth = await set_up_recharge(
        pay_http, "pm_card_visa", 10 * USD + SMS_MICROS, "cli@example.com"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metering",
            "recharge-worker",  # noqa: ASYNC220
            "--consumer",
            "cli-test",
        ],
        cwd=ROOT,
        env=settings_env(pay_settings),
    )
    try:
        await send_messages(pay_http, account_id, 2, "cli")

        async def recharged() -> bool:
            return (await account(pay_http, account_id, auth))[
                "balance_micros"
            ] == 70 * USD - SMS_MICROS

        await wait_until(recharged, timeout_s=15)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
