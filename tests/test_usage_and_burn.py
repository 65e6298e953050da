"""Server-side figures the pages show: the burn rate over a real window (counted
by the charging scripts in Redis), usage totals per billing item and spend per
day in the customer's time zone (from the ledger), and activity lines in words."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devkit.testing import GatewayProcess
from metering import debits
from metering.burn import burn_rates, spend_key
from metering.settings import Settings
from metering.store import Store, open_store
from tests.conftest import OPS, SWITCH, make_account

SMS = 7_500
US = 1_000_000


@pytest.fixture(scope="module")
async def short_burn_store(settings: Settings) -> AsyncIterator[Store]:
    """Buckets of 10 s summed over 30 s: the window is short, not the test's sleep."""
    store = await open_store(settings.replace(burn_bucket_s=10, burn_window_s=30))
    yield store
    await store.redis.aclose()


async def test_burn_rate_counts_every_debit_over_the_window_then_forgets_it(
    short_burn_store: Store, http: httpx.AsyncClient
) -> None:
    store = short_burn_store
    account_id = await make_account(http, balance_micros=10 * US)
    before = time.time_ns() // 1_000
    for i in range(4):
        await debits.message(store, account_id, f"b{i}", "outbound")
    now = time.time_ns() // 1_000
    rates = await burn_rates(store, now)
    # 4 texts in the last 30 s: 30,000 micros per 30 s = 60,000 per minute.
    assert rates.rates[account_id] == 4 * SMS * 60 // 30
    assert rates.window_s == 30
    # Seen from 45 s later the debits are outside the window (no sleep: the
    # reader is told the time); the bucket keys also expire after 50 s.
    later = await burn_rates(store, before + 45 * US)
    assert account_id not in later.rates
    keys = store.account_keys(account_id)
    ttl = await store.redis.ttl(spend_key(store.settings, keys.shard, now))
    assert 0 < ttl <= 50


async def test_burn_rate_weighs_the_oldest_bucket_by_its_part_in_the_window(
    short_burn_store: Store,
) -> None:
    store = short_burn_store
    account_id = f"burn-{time.time_ns()}"
    shard = store.account_keys(account_id).shard
    base = (time.time_ns() // 1_000 // (10 * US)) * 10 * US  # a bucket boundary
    # 600 micros in the bucket [base, base+10s), 300 in [base+30s, base+40s).
    await store.redis.hincrby(spend_key(store.settings, shard, base), account_id, 600)
    await store.redis.hincrby(spend_key(store.settings, shard, base + 30 * US), account_id, 300)
    # At base+34s the window (base+4s, base+34s] holds 6/10 of the first bucket.
    rates = await burn_rates(store, base + 34 * US)
    assert rates.rates[account_id] == (600 * 6 // 10 + 300) * 60 // 30
    await store.redis.delete(
        spend_key(store.settings, shard, base), spend_key(store.settings, shard, base + 30 * US)
    )


async def test_burn_rates_endpoint_is_for_ops_only(http: httpx.AsyncClient) -> None:
    account_id = await make_account(http, balance_micros=US)
    r = await http.post(
        "/v1/messages",
        headers=SWITCH,
        json={"account_id": account_id, "message_id": "e1", "direction": "outbound"},
    )
    assert r.status_code == 200
    r = await http.get("/v1/ops/burn-rates", headers=OPS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rates"][account_id] == SMS * 60 // body["window_s"]
    assert body["total_micros_per_minute"] >= body["rates"][account_id]
    assert (await http.get("/v1/ops/burn-rates", headers=SWITCH)).status_code == 403


@pytest.fixture(scope="module")
async def ledger_gateway(settings: Settings) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess(settings.replace(ledger_writer_in_gateway=True))
    yield process
    process.stop()


async def wait_for_entries(http: httpx.AsyncClient, account_id: str, count: int) -> list[Any]:
    deadline = time.monotonic() + 15
    while True:
        r = await http.get(f"/v1/accounts/{account_id}/activity?limit=100", headers=OPS)
        entries = r.json()["entries"]
        if len(entries) >= count or time.monotonic() > deadline:
            return list(entries)
        await asyncio.sleep(0.1)


async def test_usage_totals_per_item_and_spend_per_day_in_the_customers_zone(
    ledger_gateway: GatewayProcess,
) -> None:
    async with httpx.AsyncClient(base_url=ledger_gateway.url, timeout=30) as http:
        account_id = await make_account(http, balance_micros=20 * US)
        for body in (
            {"message_id": "u1", "direction": "outbound"},
            {"message_id": "u2", "direction": "outbound"},
            {"message_id": "u3", "direction": "inbound"},
        ):
            r = await http.post(
                "/v1/messages", headers=SWITCH, json={"account_id": account_id, **body}
            )
            assert r.status_code == 200, r.text
        r = await http.post(
            "/v1/numbers/purchases",
            headers=SWITCH,
            json={"account_id": account_id, "purchase_id": "p1", "number": "+15550199"},
        )
        assert r.status_code == 200, r.text
        r = await http.post(
            "/v1/calls",
            headers=SWITCH,
            json={"account_id": account_id, "call_id": "c1", "direction": "outbound"},
        )
        assert r.status_code == 200, r.text
        r = await http.post(
            "/v1/calls/c1/commit",
            headers=SWITCH,
            json={"account_id": account_id, "duration_seconds": 150},
        )
        assert r.status_code == 200, r.text
        call_charge = r.json()["charged_micros"]
        entries = await wait_for_entries(http, account_id, 6)
        assert len(entries) == 6
        words = [e["description"] for e in entries]
        assert words[0] == "Outgoing call, 2 min 30 s"
        assert "Phone number purchase: +15550199" in words
        assert "Incoming text message" in words and "Credit by support: test funds" in words

        zone = "Pacific/Kiritimati"  # UTC+14: "today" there is often another UTC day
        today = dt.datetime.now(zoneinfo.ZoneInfo(zone)).date().isoformat()
        r = await http.get(
            f"/v1/accounts/{account_id}/usage",
            params={"from": today, "to": today, "time_zone": zone},
            headers=OPS,
        )
        assert r.status_code == 200, r.text
        usage = r.json()
        items = {i["item"]: (i["count"], i["amount_micros"]) for i in usage["items"]}
        assert items == {
            "sms_outbound": (2, -2 * SMS),
            "sms_inbound": (1, -1_000),
            "number_purchase": (1, -US),
            "call_outbound": (1, -call_charge),
            "funds_added": (1, 20 * US),
        }
        spent = 2 * SMS + 1_000 + US + call_charge
        assert usage["spent_micros"] == spent
        assert usage["last_seq"] == 6  # the call's commit, the newest entry counted
        [day] = usage["days"]
        assert day["day"] == today and sum(day["spent_micros"].values()) == spent
        assert day["closing_balance_micros"] == 20 * US - spent
        # The day before (in that zone) holds nothing.
        yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
        r = await http.get(
            f"/v1/accounts/{account_id}/usage",
            params={"from": yesterday, "to": yesterday, "time_zone": zone},
            headers=OPS,
        )
        assert r.json()["items"] == [] and r.json()["days"] == []


async def test_usage_refuses_bad_parameters_in_words(http: httpx.AsyncClient) -> None:
    account_id = await make_account(http)
    base = f"/v1/accounts/{account_id}/usage"
    for params, field in [
        ({"from": "2026-01-02", "to": "2026-01-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "from"),
        ({"from": "2026-01-01", "to": "2026-01-01", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"from": "yesterday", "to": "2026-01-01"}, "from"),
        ({"from": "2026-01-01", "to": "2026-01-01", "tz": "UTC"}, "tz"),
    ]:
        r = await http.get(base, params=params, headers=OPS)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["field"] == field
