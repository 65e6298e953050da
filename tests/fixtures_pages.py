"""Fixtures and helpers of the browser tests (tests/test_pages*.py): Debian's
Chromium driven by Playwright (never a downloaded browser), pages that fail a
test on a script error or a Content-Security-Policy violation, and a gateway
with everything behind it (local Stripe with its Stripe.js, ledger writer,
webhooks) for the pages' money paths."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from devkit.testing import ROOT, GatewayProcess
from metering.settings import Settings
from tests.conftest import OPS, SWITCH
from tests.fixtures_payments import WEBHOOK_SECRET, StripeServer

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
# The pages show local time with its zone: the browser runs in one that is not UTC.
TIME_ZONE = "Europe/Berlin"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
USD = 1_000_000
SMS = 7_500


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once per module, before any loop work
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (./dev test does)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def new_context(browser: Browser, viewport: dict[str, int] = DESKTOP) -> BrowserContext:
    return await browser.new_context(
        viewport=viewport,  # type: ignore[arg-type]
        timezone_id=TIME_ZONE,
        locale="en-US",
        has_touch=viewport is PHONE,
    )


def watch(p: Page, errors: list[str]) -> Page:
    """Collect script errors and Content-Security-Policy violations of a page."""
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return p


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await new_context(browser)
    errors: list[str] = []
    context.on("page", lambda p: watch(p, errors))
    p = await context.new_page()
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


async def wait_js(page: Page, condition: str, timeout_ms: float = 10_000) -> None:
    """Wait for a JavaScript condition (a function body, as the CSP forbids eval)."""
    await page.wait_for_function("() => " + condition, timeout=timeout_ms)


async def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


# ---- a gateway with everything: local Stripe, ledger writer, webhooks --------------


@pytest.fixture(scope="module")
def showcase_gateway(
    pay_settings: Settings, pay_db: Any, stripe_server: StripeServer
) -> Iterator[GatewayProcess]:
    """Local Stripe (tests/fixtures_payments.py), its own ledger writer and burn
    rates every half second: every part of the pages works, as in the README."""
    process = GatewayProcess(
        pay_settings.replace(ledger_writer_in_gateway=True, live_ops_burn_refresh_s=0.5)
    )
    stripe_server.register_webhook("pages", process.url + "/v1/stripe/webhook", WEBHOOK_SECRET)
    yield process
    process.stop()


@pytest.fixture
async def show_http(showcase_gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=showcase_gateway.url, limits=limits, timeout=30) as c:
        yield c


async def fill_card_element(page: Page, number: str) -> None:
    """Type a card into Stripe.js's card element, as a customer does."""
    await page.wait_for_selector("body[data-card-element='1']")
    field = "#card-element input[placeholder={}]"
    await page.fill(field.format("number"), number)
    await page.fill(field.format("exp_month"), "12")
    await page.fill(field.format("exp_year"), "34")
    await page.fill(field.format("cvc"), "123")
    await page.fill(field.format("postal_code"), "10115")
