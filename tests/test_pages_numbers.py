"""The dashboard's phone numbers, low-balance alert and webhooks, and the ops
page's suspended numbers, in Debian's Chromium against a real gateway."""

from __future__ import annotations

import asyncpg
import httpx

from metering import phone_numbers
from metering.numbers.scheduler import NumberScheduler
from metering.settings import Settings
from metering.store import Store
from tests.conftest import OPS, make_account
from tests.fixtures_pages import charge, open_dashboard, token_for

NUMBER = "+15556660001"


async def test_dashboard_lists_numbers_saves_the_alert_and_refuses_a_bad_webhook(
    page,  # noqa: F811
    gateway,
    http: httpx.AsyncClient,
    store: Store,
    settings: Settings,  # noqa: F811
) -> None:
    account = await make_account(http, balance_micros=20_000_000)
    token = await token_for(http, account)
    await charge(
        http,
        "/v1/numbers/purchases",
        {"account_id": account, "purchase_id": "n1", "number": NUMBER},
    )
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        scheduler = NumberScheduler(store, pool, settings, consumer="pages")
        await scheduler.reader.ensure_groups()
        await scheduler.record_stream()
        await open_dashboard(page, gateway, account, token)
        await page.wait_for_selector("body[data-notices-ready='1']")
        rows = await page.text_content("#numbers-rows") or ""
        assert NUMBER in rows and "active" in rows and "UTC" in rows, rows

        await page.fill("#alerts-threshold", "12.50")
        await page.fill("#alerts-email", "alerts@example.com")
        await page.click("#alerts-save")
        await page.wait_for_selector("#alerts-result:has-text('Alert saved')")
        view = (await http.get(f"/v1/accounts/{account}", headers=OPS)).json()
        assert view["alerts"]["low_balance_threshold_micros"] == 12_500_000

        await page.fill("#webhooks-url", "http://127.0.0.1:9/hook")
        await page.click("#webhooks-add")
        await page.wait_for_selector("#webhooks-url-error:has-text('public address')")

        # Suspended: shown on the ops page.
        await phone_numbers.change_status(store, account, NUMBER, "suspend")
        await pool.execute(
            "UPDATE numbers SET status = 'suspended', suspended_at_us = 1 WHERE account_id = $1",
            account,
        )
        await page.goto(f"{gateway.url}/ops?token=test-ops-token")
        await page.wait_for_selector("body[data-notices-ready='1']")
        assert NUMBER in (await page.text_content("#suspended-rows") or "")
    finally:
        await pool.execute("UPDATE numbers SET status = 'released' WHERE account_id = $1", account)
        await pool.close()
