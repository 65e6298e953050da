"""Calls: pricing and rounding, grants and their sharing, the final flag, the
concurrent call cap, commit capping, and zero blocking everything."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import httpx
import pytest

from devkit.testing import RATE_CARD, GatewayProcess
from metering.store import Store
from tests.conftest import SWITCH, make_account, test_settings
from tests.ledger_stream import assert_gapless_running_sum, stream_entries

# (minimum s, increment s, price per minute, duration s, billed s, charged micros)
ROUNDING_TABLE = [
    (60, 60, 10_000, 1, 60, 10_000),
    (60, 60, 10_000, 60, 60, 10_000),
    (60, 60, 10_000, 61, 120, 20_000),
    (60, 60, 10_000, 119, 120, 20_000),
    (60, 60, 10_000, 121, 180, 30_000),
    (6, 6, 10_000, 1, 6, 1_000),
    (6, 6, 10_000, 6, 6, 1_000),
    (6, 6, 10_000, 7, 12, 2_000),
    (6, 6, 10_000, 61, 66, 11_000),
    (1, 1, 10_000, 1, 1, 167),  # 166.67 rounds up
    (1, 1, 10_000, 61, 61, 10_167),  # 10,166.67 rounds up
    (1, 1, 10_000, 3_600, 3_600, 600_000),
    (0, 1, 1, 1, 1, 1),  # 1/60 of a micro rounds up to one
    (0, 6, 9_000, 5, 6, 900),  # no minimum: whole increments only
    (30, 6, 9_000, 1, 30, 4_500),  # 30/6: the minimum, then 6 s steps
    (30, 6, 9_000, 31, 36, 5_400),
    (60, 1, 7, 61, 61, 8),  # 7.12 rounds up
    (60, 60, 999_999_999, 60, 60, 999_999_999),
]


@pytest.mark.parametrize("minimum,increment,per_minute,duration,billed,charged", ROUNDING_TABLE)
async def test_call_pricing_rounds_up_on_the_billing_grid(
    http: httpx.AsyncClient,
    minimum: int,
    increment: int,
    per_minute: int,
    duration: int,
    billed: int,
    charged: int,
) -> None:
    rate_card = {
        **RATE_CARD,
        "call_minimum_seconds": minimum,
        "call_increment_seconds": increment,
        "call_outbound_per_minute_micros": per_minute,
    }
    account = await make_account(http, 10**12, rate_card)
    a = {"account_id": account}
    r = await http.post(
        "/v1/calls", headers=SWITCH, json={**a, "call_id": "c", "direction": "outbound"}
    )
    assert r.status_code == 200, r.text
    r = await http.post(
        "/v1/calls/c/commit", headers=SWITCH, json={**a, "duration_seconds": duration}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["billed_seconds"], answer["charged_micros"]) == (billed, charged)
    assert answer["balance_micros"] == 10**12 - charged and not answer["capped"]


async def test_grant_reports_max_seconds_and_final(http: httpx.AsyncClient) -> None:
    # 1/1 billing at 6,000 micros a minute = 100 micros a second; the balance buys 450 s.
    rate_card = {
        **RATE_CARD,
        "call_minimum_seconds": 0,
        "call_increment_seconds": 1,
        "call_outbound_per_minute_micros": 6_000,
    }
    account = await make_account(http, 45_000, rate_card)
    a = {"account_id": account}
    r = (
        await http.post(
            "/v1/calls", headers=SWITCH, json={**a, "call_id": "k", "direction": "outbound"}
        )
    ).json()
    assert (r["granted_seconds"], r["max_seconds"], r["final"]) == (300, 450, False)
    assert r["validity_seconds"] == 300 + 60
    assert r["call_reserved_micros"] == 30_000 and r["available_micros"] == 15_000
    r = (await http.post("/v1/calls/k/extend", headers=SWITCH, json=a)).json()
    assert (r["granted_seconds"], r["max_seconds"], r["final"]) == (150, 150, True)
    assert r["total_granted_seconds"] == 450 and r["available_micros"] == 0
    r = await http.post("/v1/calls/k/extend", headers=SWITCH, json=a)
    assert r.status_code == 402 and r.json()["error"] == "insufficient_funds"
    # The call overran its grant: it takes the balance to zero, never below (capped).
    r = (
        await http.post("/v1/calls/k/commit", headers=SWITCH, json={**a, "duration_seconds": 500})
    ).json()
    assert (r["billed_seconds"], r["charged_micros"], r["capped"]) == (500, 45_000, True)
    assert r["balance_micros"] == 0 and r["reserved_micros"] == 0


async def test_a_short_balance_is_shared_among_open_calls(http: httpx.AsyncClient) -> None:
    rate_card = {
        **RATE_CARD,
        "call_minimum_seconds": 0,
        "call_increment_seconds": 1,
        "call_outbound_per_minute_micros": 6_000,
    }
    account = await make_account(http, 60_000, rate_card)  # buys 600 s
    a = {"account_id": account}

    async def reserve(call_id: str) -> dict:
        r = await http.post(
            "/v1/calls", headers=SWITCH, json={**a, "call_id": call_id, "direction": "outbound"}
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    first, second, third = await reserve("a"), await reserve("b"), await reserve("c")
    assert first["granted_seconds"] == 300  # a full chunk: the balance covers it
    assert second["granted_seconds"] == 150  # half of the 300 s left, not all of it
    assert third["granted_seconds"] == 50  # a third of the 150 s left
    assert second["max_seconds"] == 300 and third["max_seconds"] == 150
    view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
    assert view["reserved_micros"] == 50_000 and view["available_micros"] == 10_000


async def test_concurrent_call_cap_refuses_one_more(http: httpx.AsyncClient) -> None:
    account = await make_account(http, 10_000_000, max_concurrent_calls=2)
    a = {"account_id": account}
    for call_id in ("c1", "c2"):
        r = await http.post(
            "/v1/calls", headers=SWITCH, json={**a, "call_id": call_id, "direction": "inbound"}
        )
        assert r.status_code == 200
    r = await http.post(
        "/v1/calls", headers=SWITCH, json={**a, "call_id": "c3", "direction": "inbound"}
    )
    assert r.status_code == 429 and r.json()["error"] == "concurrent_call_limit"
    assert r.json()["limit"] == 2
    await http.post("/v1/calls/c1/release", headers=SWITCH, json=a)
    r = await http.post(
        "/v1/calls", headers=SWITCH, json={**a, "call_id": "c3", "direction": "inbound"}
    )
    assert r.status_code == 200


async def test_zero_balance_blocks_every_billable_action(http: httpx.AsyncClient) -> None:
    free_inbound = {**RATE_CARD, "sms_inbound_micros": 0, "call_inbound_per_minute_micros": 0}
    account = await make_account(http, 0, free_inbound)
    a = {"account_id": account}
    attempts = [
        ("/v1/messages", {"message_id": "m1", "direction": "outbound"}),
        ("/v1/messages", {"message_id": "m2", "direction": "inbound"}),  # free, still blocked
        ("/v1/ring-through-attempts", {"attempt_id": "t1"}),
        ("/v1/numbers/purchases", {"purchase_id": "p1", "number": "+15551230000"}),
        ("/v1/numbers/renewals", {"renewal_id": "r1", "number": "+15551230000"}),
        ("/v1/calls", {"call_id": "c1", "direction": "outbound"}),
        ("/v1/calls", {"call_id": "c2", "direction": "inbound"}),  # free, still blocked
    ]
    for path, body in attempts:
        r = await http.post(path, headers=SWITCH, json={**a, **body})
        assert r.status_code == 402, (path, body, r.text)
        assert r.json()["error"] == "insufficient_funds"


async def test_renewal_the_balance_cannot_pay_is_refused(http: httpx.AsyncClient) -> None:
    account = await make_account(http, RATE_CARD["number_renewal_micros"] - 1)
    r = await http.post(
        "/v1/numbers/renewals",
        headers=SWITCH,
        json={"account_id": account, "renewal_id": "r1", "number": "+15551230000"},
    )
    assert r.status_code == 402
    assert r.json()["cost_micros"] == RATE_CARD["number_renewal_micros"]


async def test_forgotten_reservation_expires_and_is_charged_without_a_request(
    store: Store,
) -> None:
    """The policy: a reservation nobody commits or releases is charged for the
    seconds granted when its validity runs out, by the sweeper, with no request."""
    gateway = GatewayProcess(
        test_settings(call_grant_s=2, call_validity_grace_s=1, reservation_sweep_interval_s=0.1)
    )
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            rate_card = {
                **RATE_CARD,
                "call_minimum_seconds": 0,
                "call_increment_seconds": 1,
                "call_outbound_per_minute_micros": 6_000,
            }
            account = await make_account(http, 100_000, rate_card)
            a = {"account_id": account}
            r = (
                await http.post(
                    "/v1/calls",
                    headers=SWITCH,
                    json={**a, "call_id": "lost", "direction": "outbound"},
                )
            ).json()
            assert (r["granted_seconds"], r["validity_seconds"]) == (2, 3)
            assert r["reserved_micros"] == 200
            opened = time.monotonic()
            await asyncio.sleep(1.5)
            view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
            assert view["reserved_micros"] == 200  # still within its validity
            # No request touches the call from here on: only the sweeper can close it.
            while time.monotonic() - opened < 10:
                view = (await http.get(f"/v1/accounts/{account}", headers=SWITCH)).json()
                if view["reserved_micros"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert time.monotonic() - opened >= 2.9
            assert view["reserved_micros"] == 0 and view["open_calls"] == 0
            assert view["balance_micros"] == 100_000 - 200
            entries = await stream_entries(store, account)
            assert entries[-1].item == "call_outbound" and entries[-1].amount_micros == -200
            assert entries[-1].detail.startswith("expired")
            assert_gapless_running_sum(entries)
            r = await http.post("/v1/calls/lost/extend", headers=SWITCH, json=a)
            assert r.status_code == 409 and r.json()["state"] == "expired"
            # The switch's late report of the whole grant confirms the charge: it
            # changes nothing (a shorter one corrects it, tests/test_call_closing.py).
            r = await http.post(
                "/v1/calls/lost/commit", headers=SWITCH, json={**a, "duration_seconds": 2}
            )
            assert r.status_code == 200, r.text
            assert (r.json()["charged_micros"], r.json()["correction_micros"]) == (200, 0)
            assert len(await stream_entries(store, account)) == len(entries)
    finally:
        gateway.stop()


async def test_a_call_id_with_a_slash_is_committed_not_billed_its_grant(
    http: httpx.AsyncClient,
) -> None:
    """'/' is legal in a SIP Call-ID and in the id rule: the call it names must be
    extended, committed and released through its (percent-encoded) path like any
    other, or the sweeper bills the whole grant for a call the switch hung up."""
    account = await make_account(http, 10**9)
    a = {"account_id": account}
    for call_id, last in (("a/1@sip.example.net", "commit"), ("b/2/@host", "release")):
        r = await http.post(
            "/v1/calls", headers=SWITCH, json={**a, "call_id": call_id, "direction": "outbound"}
        )
        assert r.status_code == 200, r.text
        path = "/v1/calls/" + urllib.parse.quote(call_id, safe="")
        r = await http.post(path + "/extend", headers=SWITCH, json={**a, "extend_id": "e1"})
        assert r.status_code == 200, r.text
        assert r.json()["call_id"] == call_id
        body = {**a, "duration_seconds": 6} if last == "commit" else a
        r = await http.post(f"{path}/{last}", headers=SWITCH, json=body)
        assert r.status_code == 200, r.text
        if last == "commit":
            assert r.json()["charged_micros"] == 1_000  # 6 s at 10,000 per minute
    r = await http.get(f"/v1/accounts/{account}", headers=SWITCH)
    assert r.json()["reserved_micros"] == 0
    assert r.json()["balance_micros"] == 10**9 - 1_000
