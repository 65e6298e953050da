"""The dashboard and the ops page in a real headless Chromium (Debian's
`chromium`, driven by Playwright; never a downloaded browser) against a real
gateway process. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from devkit.testing import RATE_CARD, ROOT, GatewayProcess
from metering import accounts
from metering.ledger.migrate import migrate
from metering.rate_card import RateCard
from metering.settings import Settings
from tests.conftest import OPS, SWITCH, make_account, new_account_id

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
LIVE_CHANGE_MS_MAX = 1_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once per module, before any loop work
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (./dev test does)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    await context.close()
    assert errors == [], errors


async def token_for(http: httpx.AsyncClient, account_id: str) -> str:
    r = await http.post(
        f"/v1/accounts/{account_id}/tokens", headers=OPS, json={"label": "dashboard"}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def charge(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(path, headers=SWITCH, json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def served_paths(http: httpx.AsyncClient) -> set[str]:
    doc = (await http.get("/openapi.json")).json()
    return {f"{m.upper()} {path}" for path, ops in doc["paths"].items() for m in ops}


async def shown_balance(page: Page) -> int | None:
    value = await page.get_attribute("#balance", "data-balance-micros")
    return int(value) if value else None


async def open_dashboard(page: Page, gateway: Any, account_id: str, token: str) -> None:
    await page.goto(f"{gateway.url}/dashboard?account={account_id}&token={token}")
    await page.wait_for_selector("#balance[data-balance-micros]:not([data-balance-micros=''])")


async def test_dashboard_shows_the_balance_and_follows_a_debit_within_a_second(page, gateway, http):
    account_id = await make_account(http, balance_micros=42_500_000)
    token = await token_for(http, account_id)
    # Some history, so the chart and the activity list have something to show.
    for i in range(3):
        await charge(
            http,
            "/v1/messages",
            {"account_id": account_id, "message_id": f"h{i}", "direction": "outbound"},
        )
    await charge(
        http,
        "/v1/numbers/purchases",
        {"account_id": account_id, "purchase_id": "n1", "number": "+15550100"},
    )
    await open_dashboard(page, gateway, account_id, token)
    assert await shown_balance(page) == 42_500_000 - 3 * 7_500 - 1_000_000
    assert await page.text_content("#balance") == "$41.4775"
    # The token left the address bar (kept in sessionStorage for this tab).
    assert "token=" not in page.url
    rates = await page.text_content("#rates")
    assert rates is not None
    assert "Outgoing text message" in rates and "$0.0075" in rates
    assert "Ring-through connection attempt" in rates
    await page.wait_for_selector("#live-status.status-live")

    before = await shown_balance(page)
    answer = await charge(
        http,
        "/v1/messages",
        {"account_id": account_id, "message_id": "live-1", "direction": "outbound"},
    )
    answered = time.perf_counter()
    await page.wait_for_function(
        "() => "
        f"document.getElementById('balance').dataset.balanceMicros === "
        f"'{answer['balance_micros']}'",
        timeout=LIVE_CHANGE_MS_MAX,
    )
    shown_after_ms = (time.perf_counter() - answered) * 1000
    print(f"\ndashboard balance changed {shown_after_ms:.0f} ms after the debit was answered")
    assert before is not None and answer["balance_micros"] == before - 7_500
    assert shown_after_ms < LIVE_CHANGE_MS_MAX
    # A few more changes, spaced out, so the screenshot shows the chart moving.
    for path, body in [
        ("/v1/numbers/renewals", {"renewal_id": "r1", "number": "+15550100"}),
        ("/v1/ring-through-attempts", {"attempt_id": "a1"}),
        ("/v1/numbers/purchases", {"purchase_id": "n2", "number": "+15550101"}),
        ("/v1/messages", {"message_id": "m-late", "direction": "inbound"}),
    ]:
        await page.wait_for_timeout(250)
        await charge(http, path, {"account_id": account_id, **body})
    await page.wait_for_timeout(300)  # let the chart draw its last step
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


async def test_dashboard_at_zero_says_what_is_blocked(page, gateway, http):
    account_id = await make_account(http, balance_micros=7_500)
    token = await token_for(http, account_id)
    await open_dashboard(page, gateway, account_id, token)
    assert await page.is_hidden("#zero-banner")
    await charge(
        http,
        "/v1/messages",
        {"account_id": account_id, "message_id": "last", "direction": "outbound"},
    )
    await page.wait_for_selector("#zero-banner", state="visible", timeout=LIVE_CHANGE_MS_MAX)
    banner = await page.text_content("#zero-banner")
    assert banner is not None
    for blocked in ("make or receive calls", "phone numbers", "text messages"):
        assert blocked in banner
    assert await page.text_content("#balance") == "$0.00"
    assert "zero" in (await page.get_attribute("#balance-card", "class") or "")
    await page.screenshot(path=str(ARTIFACTS / "dashboard-zero.png"), full_page=True)


async def test_dashboard_with_another_accounts_token_gets_no_balance(page, gateway, http):
    account_a = await make_account(http, balance_micros=1_000_000)
    account_b = await make_account(http, balance_micros=9_000_000)
    token_a = await token_for(http, account_a)
    await page.goto(f"{gateway.url}/dashboard?account={account_b}&token={token_a}")
    await page.wait_for_selector("#live-status.status-refused")
    assert "may not watch" in (await page.text_content("#live-status") or "")
    assert await shown_balance(page) is None
    assert "9.00" not in (await page.content())


async def test_dashboard_parts_without_an_endpoint_are_disabled_with_a_message(page, gateway, http):
    served = await served_paths(http)
    account_id = await make_account(http, balance_micros=1_000_000)
    token = await token_for(http, account_id)
    await open_dashboard(page, gateway, account_id, token)
    await page.wait_for_selector("body[data-ready='1']")
    parts = {
        "pay": ("POST /v1/accounts/{account_id}/payments", "#pay-submit"),
        "recharge": ("PUT /v1/accounts/{account_id}/recharge", "#recharge-save"),
        "card": ("PUT /v1/accounts/{account_id}/card", "#card-register"),
        "activity": ("GET /v1/accounts/{account_id}/activity", "#activity-from"),
    }
    for name, (endpoint, control) in parts.items():
        if endpoint in served:
            assert await page.is_hidden(f"#{name}-unavailable"), name
            assert await page.is_enabled(control), name
        else:
            note = await page.text_content(f"#{name}-unavailable")
            assert await page.is_visible(f"#{name}-unavailable"), name
            assert note is not None and "Not available yet" in note, name
            assert await page.is_disabled(control), name


@pytest.fixture(scope="module")
async def ledger_gateway(settings: Settings) -> AsyncIterator[GatewayProcess]:
    """A gateway running its own ledger writer, so the activity list fills."""
    await migrate(settings.database_url, create_database=True)
    process = GatewayProcess(settings.replace(ledger_writer_in_gateway=True))
    yield process
    process.stop()


async def test_activity_filters_change_the_list(page, ledger_gateway):
    gateway = ledger_gateway
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        account_id = await make_account(http, balance_micros=5_000_000)
        token = await token_for(http, account_id)
        await charge(
            http,
            "/v1/messages",
            {"account_id": account_id, "message_id": "f1", "direction": "outbound"},
        )
        await charge(
            http, "/v1/ring-through-attempts", {"account_id": account_id, "attempt_id": "f2"}
        )
    await open_dashboard(page, gateway, account_id, token)

    async def rows_when(expected: int) -> list[str]:
        """The list's rows, reloading until `expected` show: the ledger writer
        moves entries to Postgres in batches, so the newest may lag a moment."""
        deadline = time.monotonic() + 15
        while True:
            texts = await page.locator("#activity-rows tr").all_inner_texts()
            if len(texts) == expected or time.monotonic() > deadline:
                return texts
            await page.dispatch_event("#activity-form", "change")
            await asyncio.sleep(0.3)

    all_rows = await rows_when(3)
    assert len(all_rows) == 3, all_rows
    assert any("outgoing text message" in r for r in all_rows)
    assert any("ring-through connection attempt" in r for r in all_rows)
    assert any("adding funds" in r for r in all_rows)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "dashboard-activity.png"), full_page=True)
    await page.check("input[name=show][value=credits]")
    credits = await rows_when(1)
    assert len(credits) == 1 and "adding funds" in credits[0]
    await page.check("input[name=show][value=debits]")
    debits = await rows_when(2)
    assert len(debits) == 2 and not any("adding funds" in r for r in debits)
    await page.fill("#activity-to", "2001-01-01")
    await page.fill("#activity-from", "2000-01-01")
    await page.dispatch_event("#activity-form", "change")
    await page.wait_for_selector("#activity-rows >> text=No activity in this range")


async def test_a_bad_recharge_amount_shows_the_error_next_to_the_field(page, gateway, http):
    account_id = await make_account(http, balance_micros=5_000_000)
    token = await token_for(http, account_id)
    await open_dashboard(page, gateway, account_id, token)
    await page.fill("#recharge-amount", "20.00")  # must be more than $50
    await page.fill("#recharge-threshold", "10.00")
    await page.fill("#recharge-email", "billing@example.com")
    await page.uncheck("#recharge-enabled")
    await page.click("#recharge-save")
    await page.wait_for_selector("#recharge-amount-error:not(:empty)")
    assert await page.get_attribute("#recharge-amount", "aria-invalid") == "true"
    assert await page.text_content("#recharge-threshold-error") == ""
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "dashboard-recharge-error.png"), full_page=True)


async def test_ops_page_lists_every_account_live_and_sorts(page, gateway, http, store):
    # A few thousand accounts, created directly in Redis (fast), one near zero.
    rate_card = RateCard.parse(RATE_CARD)
    bulk = [new_account_id("ops") for _ in range(2_000)]
    for i in range(0, len(bulk), 200):
        await asyncio.gather(
            *(accounts.create_account(store, a, rate_card) for a in bulk[i : i + 200])
        )
    rich = await make_account(http, balance_micros=500_000_000)
    poor = await make_account(http, balance_micros=2_000_000)

    await page.goto(f"{gateway.url}/ops?token=test-ops-token")
    await page.wait_for_function(
        f"() => Number(document.getElementById('sum-accounts').textContent) >= {len(bulk) + 2}"
    )
    count = int(await page.text_content("#sum-accounts") or 0)
    assert "token=" not in page.url
    # Only the rows in view are in the DOM, whatever the number of accounts.
    assert await page.locator("#ops-rows tr").count() < 200

    async def find(account_id: str) -> str:
        await page.fill("#filter-text", account_id)
        row = f"tr[data-account='{account_id}']:not([hidden])"
        await page.wait_for_selector(row)
        return row

    poor_row = await find(poor)
    await page.wait_for_function(
        "() => document.getElementById('sum-shown').textContent === '1 shown'", timeout=3_000
    )
    assert "near-zero" in (await page.get_attribute(poor_row, "class") or "")

    # A burst of changes: frames keep flowing while the page stays responsive.
    await page.evaluate("""() => {
        window.__gaps = []; let last = performance.now();
        const tick = (t) => { window.__gaps.push(t - last); last = t;
                              if (window.__gaps.length < 100000) requestAnimationFrame(tick); };
        requestAnimationFrame(tick); }""")
    t0 = time.perf_counter()
    for i in range(0, 400, 40):
        await asyncio.gather(
            *(
                charge(
                    http,
                    "/v1/messages",
                    {"account_id": rich, "message_id": f"burst-{j}", "direction": "outbound"},
                )
                for j in range(i, i + 40)
            )
        )
    answer = await charge(
        http,
        "/v1/numbers/purchases",
        {"account_id": poor, "purchase_id": "p1", "number": "+15550111"},
    )
    assert answer["balance_micros"] == 1_000_000
    await page.wait_for_function(
        "() => "
        f"document.querySelector(\"{poor_row} td:nth-child(4)\").dataset.micros === '1000000'",
        timeout=LIVE_CHANGE_MS_MAX,
    )
    burst_s = time.perf_counter() - t0
    gaps = sorted(await page.evaluate("window.__gaps"))
    stats = await page.evaluate("window.opsStats")
    worst_frame_ms = gaps[-1] if gaps else 0.0
    print(
        f"\nops page with {count} accounts: 401 changes in {burst_s:.1f}s, "
        f"{len(gaps)} animation frames, worst frame gap {worst_frame_ms:.0f} ms, "
        f"longest paint {stats['flushMsMax']:.0f} ms, {stats['frames']} socket frames"
    )
    assert worst_frame_ms < 500
    rich_available = 500_000_000 - 400 * 7_500
    rich_row = await find(rich)
    await page.wait_for_function(
        "() => "
        f'document.querySelector("{rich_row} td:nth-child(4)").dataset.micros === '
        f"'{rich_available}'",
        timeout=2_000,
    )
    burn = await page.text_content(f"{rich_row} td:nth-child(5)")
    assert burn is not None and burn != "$0.00"

    # Sorted by available (ascending at first); a click turns it to descending.
    await page.fill("#filter-text", "")
    await page.click("th[data-sort=available_micros]")
    await page.wait_for_timeout(1_100)  # rows are re-ordered at most once a second
    shown = [
        int(v)
        for v in await page.eval_on_selector_all(
            "#ops-rows tr:not([hidden]) td:nth-child(4)",
            "cells => cells.slice(0, 30).map(c => c.dataset.micros)",
        )
    ]
    assert len(shown) == 30 and shown == sorted(shown, reverse=True)
    assert shown[0] >= rich_available
    # No filter: every row is shown, and the count does not linger from a filter.
    assert (await page.text_content("#sum-shown") or "") == ""
    await page.screenshot(path=str(ARTIFACTS / "ops.png"))


def test_screenshot_for_the_readme_is_committed():
    """The README shows docs/dashboard.png; refresh it from the test artifact with
    `cp tests/artifacts/dashboard-paid.png docs/dashboard.png` when the page changes."""
    committed = ROOT / "docs" / "dashboard.png"
    assert committed.exists() and committed.stat().st_size > 10_000


@pytest.fixture(scope="module")
def showcase_gateway(pay_settings: Settings, pay_db: Any) -> Iterator[GatewayProcess]:
    """Local Stripe (tests/fixtures_payments.py) and its own ledger writer: every
    part of the page works, as in the README's screenshot."""
    process = GatewayProcess(pay_settings.replace(ledger_writer_in_gateway=True))
    yield process
    process.stop()


async def test_card_register_pay_now_and_delete_through_the_page(page, showcase_gateway):
    gateway = showcase_gateway
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as pay_http:
        await card_pay_and_delete(page, gateway, pay_http)


async def card_pay_and_delete(
    page: Page, gateway: GatewayProcess, pay_http: httpx.AsyncClient
) -> None:
    account_id = await make_account(pay_http, balance_micros=3_000_000)
    token = await token_for(pay_http, account_id)
    for path, body in [
        ("/v1/numbers/purchases", {"purchase_id": "n1", "number": "+15550100"}),
        ("/v1/messages", {"message_id": "m1", "direction": "outbound"}),
        ("/v1/messages", {"message_id": "m2", "direction": "inbound"}),
        ("/v1/ring-through-attempts", {"attempt_id": "a1"}),
    ]:
        await charge(pay_http, path, {"account_id": account_id, **body})
    await open_dashboard(page, gateway, account_id, token)
    assert await page.is_hidden("#card-delete")
    await page.fill("#card-pm", "pm_card_visa")
    await page.click("#card-register")
    await page.wait_for_selector("#card-on-file >> text=ending in 4242")

    await page.fill("#pay-amount", "abc")
    await page.click("#pay-submit")
    await page.wait_for_selector("#pay-amount-error:not(:empty)")
    await page.fill("#pay-amount", "25.00")
    await page.click("#pay-submit")
    # The balance rises through the live socket, not a page reload.
    await page.wait_for_function(
        "() => document.getElementById('balance').dataset.balanceMicros === '26989500'",
        timeout=10_000,
    )
    assert await page.text_content("#pay-amount-error") == ""

    await page.fill("#recharge-amount", "75.00")
    await page.fill("#recharge-threshold", "10.00")
    await page.fill("#recharge-email", "billing@example.com")
    await page.check("#recharge-enabled")
    await page.click("#recharge-save")
    await page.wait_for_selector("#recharge-result >> text=saved")
    r = await pay_http.get(f"/v1/accounts/{account_id}", headers=OPS)
    recharge = r.json()["recharge"]
    assert (recharge["enabled"], recharge["amount_micros"], recharge["threshold_micros"]) == (
        True,
        75_000_000,
        10_000_000,
    )
    await charge(
        pay_http,
        "/v1/messages",
        {"account_id": account_id, "message_id": "m3", "direction": "outbound"},
    )
    # The activity list catches up through the ledger writer (it reloads itself).
    await page.wait_for_selector("#activity-rows tr:nth-child(7)", timeout=10_000)
    labels = await page.locator("#activity-rows tr td:nth-child(2)").all_inner_texts()
    assert "adding funds" in labels and "outgoing text message" in labels
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "dashboard-paid.png"), full_page=True)

    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#card-delete")
    await page.wait_for_selector("#card-on-file >> text=No card on file")
    r = await pay_http.get(f"/v1/accounts/{account_id}", headers=OPS)
    assert r.json()["card"] is None
