"""The API reference page (/docs): the vendored Swagger UI renders every
operation of /openapi.json in Debian's Chromium under the pages' strict
Content-Security-Policy, loads nothing from another origin, and its files are
the pinned release's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from devkit.testing import ROOT, GatewayProcess

VENDOR = ROOT / "static" / "vendor" / "swagger-ui-5.35.0"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def test_the_vendored_renderer_is_the_pinned_release_unchanged() -> None:
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    html = (ROOT / "static" / "docs.html").read_text()
    assert "/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js" in html
    assert "//" not in html.replace("/static/", "").replace("<!doctype", "")  # no other origin


async def test_docs_renders_every_operation_under_the_pages_csp(
    gateway: GatewayProcess,
) -> None:
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once, before any loop work
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (./dev test does)")
    url = gateway.url
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.get("/docs")
        assert answer.status_code == 200
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe" not in csp
        document = (await http.get("/openapi.json")).json()
    operations = sum(len(ops) for ops in document["paths"].values())
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"error: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}")
                    if msg.type == "error" or "Content Security Policy" in msg.text
                    else None
                ),
            )
            elsewhere: list[str] = []
            page.on(
                "request",
                lambda req: None if req.url.startswith(url) else elsewhere.append(req.url),
            )
            await page.goto(url + "/docs")
            await page.wait_for_selector(".opblock", timeout=30_000)
            shown = await page.locator(".opblock").count()
            title = await page.locator(".info .title").inner_text()
            # Open one operation: its schema renders from the document's components.
            await page.locator(".opblock-summary").first.click()
            await page.wait_for_selector(".opblock-body", timeout=10_000)
            (ROOT / "tests" / "artifacts").mkdir(exist_ok=True)  # noqa: ASYNC240
            await page.screenshot(path=str(ROOT / "tests" / "artifacts" / "docs.png"))
        finally:
            await browser.close()
    assert shown == operations, (shown, operations)
    assert title.startswith(document["info"]["title"])
    assert problems == [], problems
    assert elsewhere == [], elsewhere
