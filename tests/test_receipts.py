"""Receipts and pay now with the bank's authentication, over HTTP against the real
local Stripe: a receipt opens with the customer's token or with the signature of
its link and with nothing else; a card that needs 3-D Secure is charged only
once the customer confirmed it, and credited once."""

from __future__ import annotations

import urllib.parse

import httpx

from tests.fixtures_payments import StripeServer, customer_account

USD = 1_000_000


async def pay(
    http: httpx.AsyncClient, account_id: str, auth: dict[str, str], payment_id: str, usd: int
) -> httpx.Response:
    return await http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": payment_id, "amount_micros": usd * USD},
    )


async def test_a_receipt_opens_with_its_link_or_the_token_and_nothing_else(
    pay_http: httpx.AsyncClient,
) -> None:
    account_id, auth = await customer_account(pay_http, 2 * USD)
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card", headers=auth, json={"payment_method_id": "pm_card_visa"}
    )
    assert r.status_code == 200, r.text
    r = await pay(pay_http, account_id, auth, "p-1", 25)
    assert r.status_code == 200, r.text
    link = r.json()["receipt_url"]
    assert link.startswith(f"/receipt?account={account_id}&payment=p-1&signature=")
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["signature"][0]
    api = f"/v1/accounts/{account_id}/receipt"

    r = await pay_http.get(api, params={"payment": "p-1", "signature": signature})
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["status"] == "succeeded" and receipt["kind"] == "pay_now"
    assert receipt["amount_micros"] == 25 * USD and receipt["currency"] == "usd"
    assert receipt["card"] == {"brand": "visa", "last4": "4242"}
    assert receipt["payment_intent_id"].startswith("pi_")
    assert receipt["balance_after_micros"] in (None, 27 * USD)  # None until the ledger has it
    r = await pay_http.get(api, params={"payment": "p-1"}, headers=auth)
    assert r.status_code == 200 and r.json()["amount_micros"] == 25 * USD

    # The signature is for this account and this payment only.
    other_id, other_auth = await customer_account(pay_http)
    for params, headers in [
        ({"payment": "p-1", "signature": signature[:-1] + "x"}, {}),
        ({"payment": "p-2", "signature": signature}, {}),
        ({"payment": "p-1"}, {}),
        ({"payment": "p-1"}, other_auth),
    ]:
        r = await pay_http.get(api, params=params, headers=headers)
        assert r.status_code in (401, 403), (params, r.text)
        assert "amount_micros" not in r.text
    r = await pay_http.get(
        f"/v1/accounts/{other_id}/receipt", params={"payment": "p-1", "signature": signature}
    )
    assert r.status_code == 401
    r = await pay_http.get(api, params={"payment": "nope"}, headers=auth)
    assert r.status_code == 404 and r.json()["error"] == "unknown_receipt"
    r = await pay_http.get(api, params={"payment": "p-1", "extra": "1"}, headers=auth)
    assert r.status_code == 422 and r.json()["field"] == "extra"


async def test_pay_now_with_a_card_that_needs_authentication_charges_after_it_once(
    pay_http: httpx.AsyncClient, stripe_server: StripeServer
) -> None:
    account_id, auth = await customer_account(pay_http, USD)
    async with httpx.AsyncClient(base_url=stripe_server.url) as stripe_js:
        await authenticated_payments(pay_http, stripe_js, stripe_server, account_id, auth)


async def authenticated_payments(
    pay_http: httpx.AsyncClient,
    stripe_js: httpx.AsyncClient,
    stripe_server: StripeServer,
    account_id: str,
    auth: dict[str, str],
) -> None:
    """What Stripe.js does in the browser, said to the local Stripe over HTTP."""
    # Stripe's test card that asks for 3-D Secure, set up as Stripe.js would.
    r = await pay_http.post(f"/v1/accounts/{account_id}/card/setup-intents", headers=auth)
    setup = r.json()
    confirm = await stripe_js.post(
        f"/v1/setup_intents/{setup['setup_intent_id']}/confirm",
        json={
            "key": "pk_test_local",
            "client_secret": setup["client_secret"],
            "payment_method_data": {
                "type": "card",
                "card": {
                    "number": "4000002500003155",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "cvc": "123",
                },
            },
        },
    )
    assert confirm.json()["status"] == "requires_action"  # the bank's check at set-up
    (
        await stripe_js.post(
            f"/v1/setup_intents/{setup['setup_intent_id']}/confirm",
            json={"key": "pk_test_local", "client_secret": setup["client_secret"]},
        )
    ).raise_for_status()
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/card",
        headers=auth,
        json={"setup_intent_id": setup["setup_intent_id"]},
    )
    assert r.status_code == 200 and r.json()["last4"] == "3155", r.text

    r = await pay(pay_http, account_id, auth, "auth-1", 10)
    assert r.status_code == 402, r.text
    body = r.json()
    assert body["error"] == "authentication_required" and body["client_secret"].startswith("pi_")
    assert (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()[
        "balance_micros"
    ] == USD
    # Asking again before the customer confirmed: still waiting, nothing charged.
    r = await pay(pay_http, account_id, auth, "auth-1", 10)
    assert r.status_code == 402 and r.json()["error"] == "authentication_required"
    intents = stripe_server.intents_created()
    # What Stripe.js's confirmCardPayment does once the customer confirmed.
    (
        await stripe_js.post(
            f"/v1/payment_intents/{body['payment_intent_id']}/_authenticate?success=true",
            json={"key": "pk_test_local", "client_secret": body["client_secret"]},
        )
    ).raise_for_status()
    for _ in range(2):  # the page's repeat, and a retry of it
        r = await pay(pay_http, account_id, auth, "auth-1", 10)
        assert r.status_code == 200, r.text
        assert r.json()["balance_micros"] == 11 * USD
    assert stripe_server.intents_created() == intents  # no second charge

    # Authentication refused at the bank: declined, nothing credited.
    r = await pay(pay_http, account_id, auth, "auth-2", 5)
    refused = r.json()
    (
        await stripe_js.post(
            f"/v1/payment_intents/{refused['payment_intent_id']}/_authenticate?success=false",
            json={"key": "pk_test_local", "client_secret": refused["client_secret"]},
        )
    ).raise_for_status()
    r = await pay(pay_http, account_id, auth, "auth-2", 5)
    assert r.status_code == 402 and r.json()["error"] == "card_declined", r.text
    assert "did not confirm" in r.json()["message"] or "authentication" in r.json()["message"]
    assert (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()[
        "balance_micros"
    ] == 11 * USD


async def test_a_receipt_link_with_garbage_is_refused_not_an_error(
    pay_http: httpx.AsyncClient,
) -> None:
    """Found by the simulation's fuzzer: a signature or id of any characters is a
    clear 4xx (it was a 500: comparing a non-ASCII signature raised)."""
    account_id, _auth = await customer_account(pay_http)
    api = f"/v1/accounts/{account_id}/receipt"
    for params in [
        *({"payment": "p-1", "signature": s} for s in ("\u00e6", "sig\u00e6n\u00e9\U0001f600")),
        {"payment": "p-1", "signature": "ʇǝɯ ʇᴉs ɹolop"},
        {"payment": ")ÿ\U000c8ddc9&\x8d\r", "signature": "Ê¯¤Å"},
        {"attempt": "ʇǝɯ", "signature": "x"},
        {"attempt": "1-1", "payment": "", "signature": "\x00"},
    ]:
        r = await pay_http.get(api, params=params)
        assert r.status_code in (401, 422), (params, r.status_code, r.text)
