"""Pay now, card on file, recharge settings and signed webhooks, end to end:
the real Stripe SDK over HTTP to a local Stripe server, a real gateway process,
real Redis and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import httpx
import orjson

from metering.store import Store
from tests.fixtures_payments import (
    WEBHOOK_SECRET,
    PaymentsGateway,
    StripeServer,
    customer_account,
    wait_until,
)

USD = 1_000_000


async def ledger_entries(store: Store, account_id: str) -> list[dict[str, str]]:
    keys = store.account_keys(account_id)
    return [
        f for _id, f in await store.redis.xrange(keys.shard.ledger) if f["account_id"] == account_id
    ]


async def balance_of(http: httpx.AsyncClient, account_id: str, auth: dict[str, str]) -> int:
    r = await http.get(f"/v1/accounts/{account_id}", headers=auth)
    assert r.status_code == 200, r.text
    return int(r.json()["balance_micros"])


async def put_card(
    http: httpx.AsyncClient, account_id: str, auth: dict[str, str], pm: str
) -> dict[str, Any]:
    r = await http.put(
        f"/v1/accounts/{account_id}/card", headers=auth, json={"payment_method_id": pm}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), b"%d." % timestamp + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


async def settings_row(db: Any, account_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT enabled, amount_micros, threshold_micros, failure_email "
        "FROM recharge_settings WHERE account_id = $1",
        account_id,
    )
    return dict(row) if row else None


async def redis_recharge_fields(store: Store, account_id: str) -> list[str | None]:
    return list(
        await store.redis.hmget(
            store.account_keys(account_id).account,
            "recharge_enabled",
            "recharge_amount_micros",
            "recharge_threshold_micros",
            "recharge_failure_email",
        )
    )


async def test_card_on_file_keeps_only_brand_last4_expiry(pay_http: httpx.AsyncClient) -> None:
    account_id, auth = await customer_account(pay_http)
    card = await put_card(pay_http, account_id, auth, "pm_card_visa")
    assert card == {
        "account_id": account_id,
        "brand": "visa",
        "last4": "4242",
        "exp_month": 12,
        "exp_year": 2030,
    }
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["card"] == {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
    # Replace, then delete: delete turns automatic recharge off with the card.
    await put_card(pay_http, account_id, auth, "pm_card_chargeCustomerFail")
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["card"]["last4"] == "0341"
    r = await pay_http.delete(f"/v1/accounts/{account_id}/card", headers=auth)
    assert r.status_code == 200 and r.json()["deleted"] is True
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["card"] is None and view["recharge"]["enabled"] is False
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card", headers=auth, json={"payment_method_id": "not-a-pm"}
    )
    assert r.status_code == 422 and r.json()["field"] == "payment_method_id"
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card",
        headers=auth,
        json={"payment_method_id": "pm_card_visa_chargeDeclined"},
    )
    assert r.status_code == 402 and r.json()["error"] == "card_declined", r.text
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card",
        headers=auth,
        json={"payment_method_id": "pm_doesnotexist"},
    )
    assert r.status_code == 422 and r.json()["field"] == "payment_method_id", r.text
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["card"] is None


async def test_recharge_settings_validation_edges(
    pay_http: httpx.AsyncClient, pay_db: Any, pay_store: Store
) -> None:
    account_id, auth = await customer_account(pay_http)
    url = f"/v1/accounts/{account_id}/recharge"
    good = {
        "amount_micros": 60 * USD,
        "threshold_micros": 10 * USD,
        "failure_email": "billing@example.com",
        "enabled": True,
    }

    r = await pay_http.put(url, headers=auth, json=good)
    assert r.status_code == 422 and r.json()["field"] == "enabled", r.text
    assert "card" in r.json()["message"]
    assert await settings_row(pay_db, account_id) is None

    await put_card(pay_http, account_id, auth, "pm_card_visa")
    r = await pay_http.put(url, headers=auth, json=good)  # threshold exactly 10 USD: accepted
    assert r.status_code == 200, r.text
    assert r.json() == {"account_id": account_id, **good}
    saved_row = await settings_row(pay_db, account_id)
    saved_redis = await redis_recharge_fields(pay_store, account_id)
    assert saved_row == good
    assert saved_redis == ["1", str(60 * USD), str(10 * USD), "billing@example.com"]

    refusals = [
        ({"amount_micros": 50 * USD}, "amount_micros", "greater than"),
        ({"threshold_micros": 9_990_000}, "threshold_micros", "at least"),
        ({"failure_email": "not-an-email"}, "failure_email", "email"),
        ({"failure_email": "a@b@example.com"}, "failure_email", "email"),
        # A valid change in the same update is not applied either.
        ({"amount_micros": 70 * USD, "failure_email": "nope"}, "failure_email", "email"),
        ({"enabled": "yes"}, "enabled", "true or false"),
    ]
    for change, field, words in refusals:
        r = await pay_http.put(url, headers=auth, json={**good, **change})
        assert r.status_code == 422, (change, r.text)
        body = r.json()
        assert body["error"] == "invalid_request" and body["field"] == field, body
        assert words in body["message"], body
        assert await settings_row(pay_db, account_id) == saved_row
        assert await redis_recharge_fields(pay_store, account_id) == saved_redis

    r = await pay_http.put(url, headers=auth, json={**good, "amount_micros": 50 * USD + 10_000})
    assert r.status_code == 200, r.text  # 50.01 USD: greater than 50
    other, other_auth = await customer_account(pay_http)
    r = await pay_http.put(url, headers=other_auth, json=good)
    assert r.status_code == 403


async def test_pay_now_credits_once_when_everything_is_delivered_twice(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    stripe_server: StripeServer,
    pay_gateway: PaymentsGateway,
) -> None:
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    intents_before = stripe_server.intents_created()
    # The first answer from Stripe is lost: the SDK sends the same call again
    # with the same idempotency key.
    stripe_server.lose_responses(1)
    body = {"payment_id": "pay-001", "amount_micros": 25 * USD}
    url = f"/v1/accounts/{account_id}/payments"
    first, second = await asyncio.gather(
        pay_http.post(url, headers=auth, json=body), pay_http.post(url, headers=auth, json=body)
    )
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert first.json()["balance_micros"] == 25 * USD
    assert second.json() == first.json()
    assert stripe_server.intents_created() - intents_before == 1

    # Both webhook endpoints (the same gateway) get payment_intent.succeeded.
    intent_id = first.json()["payment_intent_id"]

    async def both_deliveries_seen() -> bool:
        deliveries = await pay_db.fetchval(
            "SELECT deliveries FROM stripe_webhook_events WHERE object_id = $1 "
            "AND type = 'payment_intent.succeeded'",
            intent_id,
        )
        return deliveries == 2

    await wait_until(both_deliveries_seen)
    assert await balance_of(pay_http, account_id, auth) == 25 * USD
    credits = [e for e in await ledger_entries(pay_store, account_id) if e["item"] == "funds_added"]
    assert len(credits) == 1 and credits[0]["amount_micros"] == str(25 * USD)
    assert credits[0]["detail"].startswith("pay_now")
    row = await pay_db.fetchrow(
        "SELECT status, credited FROM payments WHERE account_id = $1 AND payment_id = 'pay-001'",
        account_id,
    )
    assert (row["status"], row["credited"]) == ("succeeded", True)

    # A later retry of the request answers the same, charges and credits nothing more.
    r = await pay_http.post(url, headers=auth, json=body)
    assert r.status_code == 200 and r.json() == first.json()
    assert stripe_server.intents_created() - intents_before == 1
    r = await pay_http.post(url, headers=auth, json={**body, "amount_micros": 26 * USD})
    assert r.status_code == 409


async def test_identical_pay_now_requests_at_once_all_get_the_one_credit(
    pay_http: httpx.AsyncClient,
    pay_store: Store,
    stripe_server: StripeServer,
) -> None:
    """A client that sends the same payment several times at once (a double click,
    a retrying proxy) gets the same answer on every one of them: the payment
    credited once, never a refusal of its own charge."""
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    url = f"/v1/accounts/{account_id}/payments"
    intents_before = stripe_server.intents_created()
    payments = 6
    for n in range(payments):
        body = {"payment_id": f"twin-{n}", "amount_micros": 5 * USD}
        answers = await asyncio.gather(
            *(pay_http.post(url, headers=auth, json=body) for _ in range(4))
        )
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        assert len({a.json()["payment_intent_id"] for a in answers}) == 1
    assert stripe_server.intents_created() - intents_before == payments
    assert await balance_of(pay_http, account_id, auth) == payments * 5 * USD
    credits = [e for e in await ledger_entries(pay_store, account_id) if e["item"] == "funds_added"]
    assert len(credits) == payments


async def test_declined_card_credits_nothing_and_says_why(
    pay_http: httpx.AsyncClient, pay_db: Any, pay_store: Store
) -> None:
    account_id, auth = await customer_account(pay_http)
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": "p1", "amount_micros": 20 * USD},
    )
    assert r.status_code == 409 and r.json()["error"] == "no_card_on_file"
    await put_card(pay_http, account_id, auth, "pm_card_chargeCustomerFail")
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": "p1", "amount_micros": 20 * USD},
    )
    assert r.status_code == 402, r.text
    assert r.json()["error"] == "card_declined"
    assert "declined" in r.json()["message"] and "nothing was credited" in r.json()["message"]
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": "p1", "amount_micros": 20 * USD},
    )
    assert r.status_code == 402 and r.json()["error"] == "payment_failed"
    await asyncio.sleep(2.5)  # the payment_failed webhooks arrive and change nothing
    assert await balance_of(pay_http, account_id, auth) == 0
    assert await ledger_entries(pay_store, account_id) == []
    row = await pay_db.fetchrow(
        "SELECT status, failure_reason FROM payments WHERE account_id = $1", account_id
    )
    assert row["status"] == "failed" and "declined" in row["failure_reason"]


async def test_webhook_with_bad_missing_or_stale_signature_changes_nothing(
    pay_http: httpx.AsyncClient, pay_db: Any, pay_store: Store
) -> None:
    # A failed pay-now payment: a genuine succeeded event for it would credit it.
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_chargeCustomerFail")
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": "forge-1", "amount_micros": 30 * USD},
    )
    assert r.status_code == 402
    event_id = f"evt_forged_{account_id}"
    payload = orjson.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": f"pi_forged_{account_id}",
                    "object": "payment_intent",
                    "amount": 3000,
                    "status": "succeeded",
                    "metadata": {
                        "account_id": account_id,
                        "payment_id": "forge-1",
                        "kind": "pay_now",
                    },
                }
            },
        }
    )
    now = int(time.time())
    refused = {
        "missing": {},
        "bad": {"Stripe-Signature": sign(payload, "whsec_wrong", now)},
        "garbled": {"Stripe-Signature": "t=abc,v1=zz"},
        "stale": {"Stripe-Signature": sign(payload, WEBHOOK_SECRET, now - 3600)},
        "tampered": {
            "Stripe-Signature": sign(payload.replace(b"3000", b"3001"), WEBHOOK_SECRET, now)
        },
    }
    for name, headers in refused.items():
        r = await pay_http.post(
            "/v1/stripe/webhook",
            content=payload,
            headers={"Content-Type": "application/json", **headers},
        )
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"] == "webhook_rejected", name
        assert await balance_of(pay_http, account_id, auth) == 0
        assert not await pay_db.fetchval(
            "SELECT 1 FROM stripe_webhook_events WHERE event_id = $1", event_id
        )
    # The same event correctly signed is accepted, once.
    good = {
        "Content-Type": "application/json",
        "Stripe-Signature": sign(payload, WEBHOOK_SECRET, int(time.time())),
    }
    r = await pay_http.post("/v1/stripe/webhook", content=payload, headers=good)
    assert r.status_code == 200 and r.json()["outcome"] == "credited", r.text
    r = await pay_http.post("/v1/stripe/webhook", content=payload, headers=good)
    assert r.status_code == 200 and r.json()["outcome"] == "duplicate", r.text
    assert await balance_of(pay_http, account_id, auth) == 30 * USD


async def test_pay_now_with_stripe_unreachable_is_503_then_retry_credits_once(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Any,
    stripe_server: StripeServer,
) -> None:
    import pytest

    from devkit.testing import free_port
    from metering.errors import Unavailable
    from metering.payments import pay_now
    from metering.payments.stripe_client import build_stripe_client, close_stripe_client

    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    down = pay_settings.replace(
        stripe_api_base=f"http://127.0.0.1:{free_port()}", stripe_max_network_retries=0
    )
    down_client, up_client = build_stripe_client(down), build_stripe_client(pay_settings)
    try:
        with pytest.raises(Unavailable, match="retry with the same payment_id"):
            await pay_now.pay_now(
                pay_store, pay_db, down_client, down, account_id, "net-1", 15 * USD
            )
        assert await balance_of(pay_http, account_id, auth) == 0
        paid = await pay_now.pay_now(
            pay_store, pay_db, up_client, pay_settings, account_id, "net-1", 15 * USD
        )
        again = await pay_now.pay_now(
            pay_store, pay_db, up_client, pay_settings, account_id, "net-1", 15 * USD
        )
    finally:
        await close_stripe_client(down_client)
        await close_stripe_client(up_client)
    assert paid.balance_micros == again.balance_micros == 15 * USD
    assert await balance_of(pay_http, account_id, auth) == 15 * USD
