"""Registering a card through a SetupIntent, as the dashboard does with Stripe.js:
the gateway creates the SetupIntent, the browser confirms it at Stripe (here the
test confirms it at the local Stripe, as Stripe.js would), and the gateway keeps
the card of a SetupIntent that is this account's and succeeded, nothing else."""

from __future__ import annotations

import httpx
import stripe

from tests.fixtures_payments import customer_account

USD = 1_000_000


async def start_setup(http: httpx.AsyncClient, account_id: str, auth: dict[str, str]) -> dict:
    r = await http.post(f"/v1/accounts/{account_id}/card/setup-intents", headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["setup_intent_id"].startswith("seti_")
    assert body["client_secret"].startswith(body["setup_intent_id"] + "_secret_")
    return dict(body)


async def test_a_confirmed_setup_intent_becomes_the_card_on_file(
    pay_http: httpx.AsyncClient, stripe_client: stripe.StripeClient
) -> None:
    account_id, auth = await customer_account(pay_http)
    setup = await start_setup(pay_http, account_id, auth)
    # Not confirmed yet: refused, nothing stored.
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card",
        headers=auth,
        json={"setup_intent_id": setup["setup_intent_id"]},
    )
    assert r.status_code == 422 and r.json()["field"] == "setup_intent_id", r.text
    assert "enter the card again" in r.json()["message"]
    # What Stripe.js does in the browser: confirm with the card.
    await stripe_client.v1.setup_intents.confirm_async(
        setup["setup_intent_id"], {"payment_method": "pm_card_visa"}
    )
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card",
        headers=auth,
        json={"setup_intent_id": setup["setup_intent_id"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["last4"] == "4242" and r.json()["brand"] == "visa"
    r = await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)
    assert r.json()["card"]["last4"] == "4242"


async def test_another_accounts_setup_intent_is_refused(
    pay_http: httpx.AsyncClient, stripe_client: stripe.StripeClient
) -> None:
    owner, owner_auth = await customer_account(pay_http)
    setup = await start_setup(pay_http, owner, owner_auth)
    await stripe_client.v1.setup_intents.confirm_async(
        setup["setup_intent_id"], {"payment_method": "pm_card_visa"}
    )
    other, other_auth = await customer_account(pay_http)
    r = await pay_http.put(
        f"/v1/accounts/{other}/card",
        headers=other_auth,
        json={"setup_intent_id": setup["setup_intent_id"]},
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"] == "Stripe knows no such card set-up"
    r = await pay_http.get(f"/v1/accounts/{other}", headers=other_auth)
    assert r.json()["card"] is None


async def test_card_body_takes_one_of_setup_intent_or_payment_method(
    pay_http: httpx.AsyncClient,
) -> None:
    account_id, auth = await customer_account(pay_http)
    for body in ({}, {"setup_intent_id": "seti_x", "payment_method_id": "pm_card_visa"}):
        r = await pay_http.put(f"/v1/accounts/{account_id}/card", headers=auth, json=body)
        assert r.status_code == 422, r.text
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card", headers=auth, json={"setup_intent_id": "pi_123"}
    )
    assert r.status_code == 422 and "seti_" in r.json()["message"]
