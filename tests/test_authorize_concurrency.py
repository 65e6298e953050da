"""Invariant 2: N concurrent requests against one account never overspend."""

from __future__ import annotations

import asyncio

import httpx

from devkit.testing import RATE_CARD
from metering.store import Store
from tests.conftest import SWITCH, make_account
from tests.ledger_stream import assert_gapless_running_sum, stream_entries

SMS_MICROS = RATE_CARD["sms_outbound_micros"]


async def test_concurrent_debits_never_overspend(http: httpx.AsyncClient, store: Store) -> None:
    # Covers exactly 137 texts, plus a remainder too small for a 138th.
    opening = 137 * SMS_MICROS + SMS_MICROS - 1
    account = await make_account(http, opening)

    async def send(i: int) -> httpx.Response:
        return await http.post(
            "/v1/messages",
            headers=SWITCH,
            json={"account_id": account, "message_id": f"m-{i}", "direction": "outbound"},
        )

    answers = await asyncio.gather(*(send(i) for i in range(500)))
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 137
    assert statuses.count(402) == 363
    for r in answers:
        if r.status_code == 402:
            body = r.json()
            assert body["error"] == "insufficient_funds"
            assert body["cost_micros"] == SMS_MICROS
            assert 0 <= body["available_micros"] < SMS_MICROS

    account_view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
    assert account_view["balance_micros"] == SMS_MICROS - 1
    assert account_view["reserved_micros"] == 0

    entries = await stream_entries(store, account)
    # seq 1 is the opening credit, then exactly 137 debits: gapless, running sums.
    assert entries[0].item == "funds_added" and entries[0].amount_micros == opening
    debits = entries[1:]
    assert len(debits) == 137
    assert all(e.item == "sms_outbound" and e.amount_micros == -SMS_MICROS for e in debits)
    assert assert_gapless_running_sum(entries) == SMS_MICROS - 1
    assert len({e.request_id for e in debits}) == 137


async def test_concurrent_reservations_never_overspend(
    http: httpx.AsyncClient, store: Store
) -> None:
    # A 300 s billing unit makes every grant exactly one unit: 137 of them fit.
    rate_card = {
        **RATE_CARD,
        "call_increment_seconds": 300,
        "call_minimum_seconds": 300,
        "call_outbound_per_minute_micros": 12_000,
    }
    unit_micros = 5 * 12_000
    opening = 137 * unit_micros + unit_micros - 1
    account = await make_account(http, opening, rate_card)

    async def reserve(i: int) -> httpx.Response:
        return await http.post(
            "/v1/calls",
            headers=SWITCH,
            json={"account_id": account, "call_id": f"c-{i}", "direction": "outbound"},
        )

    answers = await asyncio.gather(*(reserve(i) for i in range(500)))
    granted = [r.json() for r in answers if r.status_code == 200]
    assert len(granted) == 137
    assert [r.status_code for r in answers].count(402) == 363
    assert all(
        g["granted_seconds"] == 300 and g["call_reserved_micros"] == unit_micros for g in granted
    )

    view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
    assert view["reserved_micros"] == 137 * unit_micros
    assert view["available_micros"] == unit_micros - 1
    assert view["open_calls"] == 137

    # Every call talks for its full grant: the balance ends at the remainder, never below.
    call_ids = [g["call_id"] for g in granted]
    commits = await asyncio.gather(
        *(
            http.post(
                f"/v1/calls/{c}/commit",
                headers=SWITCH,
                json={"account_id": account, "duration_seconds": 300},
            )
            for c in call_ids
        )
    )
    assert all(
        r.status_code == 200
        and r.json()["charged_micros"] == unit_micros
        and not r.json()["capped"]
        for r in commits
    )
    view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
    assert view["balance_micros"] == unit_micros - 1
    assert view["reserved_micros"] == 0
    entries = await stream_entries(store, account)
    assert len(entries) == 138
    assert assert_gapless_running_sum(entries) == unit_micros - 1


async def test_parallel_extends_share_a_short_balance(http: httpx.AsyncClient) -> None:
    """Concurrent extends of many calls never reserve more than the balance."""
    rate_card = {
        **RATE_CARD,
        "call_increment_seconds": 1,
        "call_minimum_seconds": 0,
        "call_outbound_per_minute_micros": 6_000,
    }  # 100 micros a second
    account = await make_account(http, 100 * 3_000, rate_card)  # buys 3,000 s in all
    calls = [f"x-{i}" for i in range(8)]
    for c in calls:
        r = await http.post(
            "/v1/calls",
            headers=SWITCH,
            json={"account_id": account, "call_id": c, "direction": "outbound"},
        )
        assert r.status_code == 200, r.text
    for _ in range(6):
        await asyncio.gather(
            *(
                http.post(f"/v1/calls/{c}/extend", headers=SWITCH, json={"account_id": account})
                for c in calls
            )
        )
    view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
    assert 0 <= view["reserved_micros"] <= view["balance_micros"] == 300_000
    assert view["available_micros"] >= 0
