"""Security headers on every answer: the pages get a strict Content Security
Policy (self plus the configured Stripe.js origin) that a real Chromium loads
without a single violation; every answer refuses framing and MIME sniffing and
sends no referrer; HSTS only on answers served over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from devkit.testing import GatewayProcess
from gateway.csp import content_security_policy
from metering.settings import Settings
from tests.conftest import OPS, SWITCH, make_account
from tests.fixtures_pages import CHROMIUM, CHROMIUM_ARGS, token_for

STRIPE_JS_URL = "https://js.stripe.com/v3/"


def directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def assert_common_headers(r: httpx.Response, where: str) -> None:
    h = r.headers
    assert h.get("x-content-type-options") == "nosniff", where
    assert h.get("x-frame-options") == "DENY", where
    assert h.get("referrer-policy") == "no-referrer", where
    csp = h.get("content-security-policy")
    assert csp is not None, where
    assert directives(csp)["frame-ancestors"] == ["'none'"], where
    # One of each: two policies would both apply and an API default would break the pages.
    for name in ("content-security-policy", "referrer-policy", "x-frame-options"):
        assert len(h.get_list(name)) == 1, (where, name, h.get_list(name))
    assert "strict-transport-security" not in h, f"{where}: HSTS over plain HTTP"


async def test_every_answer_carries_the_security_headers(
    http: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    account_id = await make_account(http, 1_000_000)
    token = await token_for(http, account_id)
    requests: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("GET", f"/v1/accounts/{account_id}", OPS, None, 200),
        ("GET", f"/v1/accounts/{account_id}", {"Authorization": f"Bearer {token}"}, None, 200),
        ("GET", "/v1/accounts/x", {"Authorization": "Bearer wrong"}, None, 401),
        ("GET", "/v1/no-such-path", OPS, None, 404),
        ("DELETE", "/v1/messages", SWITCH, None, 405),
        ("POST", "/v1/messages", SWITCH, {"account_id": account_id}, 422),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {"account_id": account_id, "message_id": "h-1", "direction": "outbound"},
            200,
        ),
        ("GET", "/openapi.json", {}, None, 200),
        ("GET", "/healthz", {}, None, 200),
        ("GET", "/static/common.js", {}, None, 200),
        ("GET", "/static/no-such-file.js", {}, None, 404),
        ("GET", "/dashboard", {}, None, 200),
        ("GET", "/ops", {}, None, 200),
    ]
    for method, path, headers, body, status in requests:
        r = await http.request(method, path, headers=headers, json=body)
        where = f"{method} {path}"
        assert r.status_code == status, (where, r.text)
        assert_common_headers(r, where)
        csp = directives(r.headers["content-security-policy"])
        if path in ("/dashboard", "/ops"):
            assert csp == directives(content_security_policy(gateway.settings)), where
            assert "'unsafe-inline'" not in r.headers["content-security-policy"]
            assert "'unsafe-eval'" not in r.headers["content-security-policy"]
        elif not path.startswith("/static/"):
            assert csp["default-src"] == ["'none'"], where


def test_the_page_policy_allows_self_and_the_configured_stripe_js_origin_only() -> None:
    settings = Settings.from_env({}).replace(
        stripe_js_url=STRIPE_JS_URL, stripe_api_base="https://api.stripe.com"
    )
    csp = directives(content_security_policy(settings))
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'", "https://js.stripe.com"]
    assert csp["style-src"] == ["'self'"]
    assert csp["frame-src"] == ["https://js.stripe.com", "https://hooks.stripe.com"]
    assert set(csp["connect-src"]) == {"'self'", "https://api.stripe.com", "https://js.stripe.com"}
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'self'"] and csp["object-src"] == ["'none'"]
    local = directives(content_security_policy(Settings.from_env({})))
    assert local["script-src"] == ["'self'", "http://127.0.0.1:8420"]


@pytest.fixture(scope="module")
def tls_gateway(settings: Settings) -> Any:
    """A gateway told by its trusted proxy (127.0.0.1) that the client used TLS."""
    process = GatewayProcess(settings.replace(http_hsts_max_age_s=600))
    yield process
    process.stop()


async def test_hsts_is_sent_only_when_the_answer_was_served_over_tls(tls_gateway: Any) -> None:
    async with httpx.AsyncClient(base_url=tls_gateway.url) as client:
        plain = await client.get("/openapi.json")
        assert "strict-transport-security" not in plain.headers
        tls = await client.get("/openapi.json", headers={"X-Forwarded-Proto": "https"})
        assert tls.headers["strict-transport-security"] == "max-age=600"
        page = await client.get("/dashboard", headers={"X-Forwarded-Proto": "https"})
        assert page.headers["strict-transport-security"] == "max-age=600"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def test_the_pages_run_under_their_policy_without_a_violation(
    browser: Browser, gateway: GatewayProcess, http: httpx.AsyncClient
) -> None:
    account_id = await make_account(http, 5_000_000)
    token = await token_for(http, account_id)
    context = await browser.new_context()
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' "
        "+ e.blockedURI))"
    )
    try:
        await page.goto(f"{gateway.url}/dashboard?account={account_id}&token={token}")
        await page.wait_for_selector("#live-status.status-live")
        await page.goto(f"{gateway.url}/ops?token=test-ops-token")
        await page.wait_for_selector("#live-status.status-live")
        # The ops table's column widths come from the stylesheet, not inline styles.
        width = await page.evaluate(
            "getComputedStyle(document.querySelector('.ops-table col')).width"
        )
        assert width not in ("", "auto"), width
        # What the policy is for: an injected inline script does not run.
        ran = await page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.injected = 1'; document.body.appendChild(s);"
            " return window.injected === 1; }"
        )
        assert ran is False
        await page.wait_for_timeout(100)
    finally:
        await context.close()
    assert any("script-src" in v for v in violations), "the injected script was not reported"
    others = [v for v in violations if "script-src" not in v or "inline" not in v]
    assert others == [], others
