"""Invariant 3: a retry with the same id returns the first answer and charges
nothing more; the same id with a different body is a 409."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from devkit.testing import RATE_CARD
from tests.conftest import OPS, SWITCH, make_account, new_account_id


async def _retried(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> list[httpx.Response]:
    """The same request five times, concurrently (retries can overlap the first try)."""
    return list(
        await asyncio.gather(*(http.post(path, headers=headers, json=body) for _ in range(5)))
    )


async def _balance(http: httpx.AsyncClient, account: str) -> int:
    r = await http.get(f"/v1/accounts/{account}", headers=SWITCH)
    return int(r.json()["balance_micros"])


def _same_answer(answers: list[httpx.Response], status: int) -> dict[str, Any]:
    assert {r.status_code for r in answers} == {status}, [r.text for r in answers]
    bodies = [r.json() for r in answers]
    assert all(b == bodies[0] for b in bodies), bodies
    return bodies[0]


async def test_one_shot_debits_retried_charge_once(http: httpx.AsyncClient) -> None:
    account = await make_account(http, 10_000_000)
    cases = [
        (
            "/v1/messages",
            {"message_id": "m1", "direction": "outbound"},
            {"direction": "inbound"},
            RATE_CARD["sms_outbound_micros"],
        ),
        (
            "/v1/ring-through-attempts",
            {"attempt_id": "a1"},
            None,
            RATE_CARD["ring_through_attempt_micros"],
        ),
        (
            "/v1/numbers/purchases",
            {"purchase_id": "p1", "number": "+15550001"},
            {"number": "+15550002"},
            RATE_CARD["number_purchase_micros"],
        ),
        (
            "/v1/numbers/renewals",
            {"renewal_id": "r1", "number": "+15550001"},
            {"number": "+15550003"},
            RATE_CARD["number_renewal_micros"],
        ),
    ]
    for path, body, changed, price in cases:
        before = await _balance(http, account)
        first = _same_answer(
            await _retried(http, path, {"account_id": account, **body}, SWITCH), 200
        )
        assert first["charged_micros"] == price
        assert await _balance(http, account) == before - price
        if changed is not None:
            r = await http.post(
                path, headers=SWITCH, json={"account_id": account, **body, **changed}
            )
            assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"
            assert await _balance(http, account) == before - price


async def test_credit_retried_credits_once(http: httpx.AsyncClient) -> None:
    account = await make_account(http)
    path = f"/v1/accounts/{account}/credits"
    body = {"credit_id": "topup-1", "amount_micros": 5_000_000, "reason": "goodwill"}
    first = _same_answer(await _retried(http, path, body, OPS), 200)
    assert first["balance_micros"] == 5_000_000
    r = await http.post(path, headers=OPS, json={**body, "amount_micros": 6_000_000})
    assert r.status_code == 409
    assert await _balance(http, account) == 5_000_000


async def test_account_creation_retried_creates_once(http: httpx.AsyncClient) -> None:
    account = new_account_id()
    body = {"account_id": account, "rate_card": RATE_CARD}
    answers = await _retried(http, "/v1/accounts", body, OPS)
    assert [r.status_code for r in answers] == [201] * 5
    assert len({r.json()["created_at_us"] for r in answers}) == 1
    r = await http.post(
        "/v1/accounts",
        headers=OPS,
        json={"account_id": account, "rate_card": {**RATE_CARD, "sms_outbound_micros": 1}},
    )
    assert r.status_code == 409 and r.json()["error"] == "account_exists"


async def test_call_requests_retried_charge_once(http: httpx.AsyncClient) -> None:
    account = await make_account(http, 10_000_000)
    a = {"account_id": account}
    reserve = _same_answer(
        await _retried(http, "/v1/calls", {**a, "call_id": "k1", "direction": "outbound"}, SWITCH),
        200,
    )
    r = await http.post(
        "/v1/calls", headers=SWITCH, json={**a, "call_id": "k1", "direction": "inbound"}
    )
    assert r.status_code == 409
    extend = _same_answer(
        await _retried(http, "/v1/calls/k1/extend", {**a, "extend_id": "e1"}, SWITCH), 200
    )
    assert extend["total_granted_seconds"] == reserve["granted_seconds"] + extend["granted_seconds"]
    view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
    assert view["reserved_micros"] == extend["call_reserved_micros"]

    commit = _same_answer(
        await _retried(http, "/v1/calls/k1/commit", {**a, "duration_seconds": 95}, SWITCH), 200
    )
    assert commit["billed_seconds"] == 96  # 6/6 billing
    assert commit["charged_micros"] == 16_000
    assert await _balance(http, account) == 10_000_000 - 16_000
    r = await http.post("/v1/calls/k1/commit", headers=SWITCH, json={**a, "duration_seconds": 96})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"
    r = await http.post("/v1/calls/k1/release", headers=SWITCH, json=a)
    assert r.status_code == 409 and r.json()["error"] == "call_closed"

    _same_answer(
        await _retried(http, "/v1/calls", {**a, "call_id": "k2", "direction": "inbound"}, SWITCH),
        200,
    )
    release = _same_answer(await _retried(http, "/v1/calls/k2/release", a, SWITCH), 200)
    assert release["charged_micros"] == 0 and release["reserved_micros"] == 0
    assert await _balance(http, account) == 10_000_000 - 16_000
    r = await http.post("/v1/calls/k2/commit", headers=SWITCH, json={**a, "duration_seconds": 5})
    assert r.status_code == 409 and r.json()["error"] == "call_closed"
