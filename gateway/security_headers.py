"""Security headers on every HTTP answer, added by one pure ASGI middleware (no
per-request parsing: two precomputed header lists, picked by path).

- Every answer: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` (and
  CSP `frame-ancestors 'none'`, its modern form), `Referrer-Policy: no-referrer`
  (page URLs carry tokens).
- The pages (`/dashboard`, `/ops`, `/static/*`, anything outside the API): the
  pages' Content Security Policy (gateway/csp.py: this origin, plus the
  configured Stripe.js origin; no inline script or style).
- The API, `/openapi.json` and `/healthz`: `default-src 'none'`, since a JSON
  answer never needs to load anything.
- `Strict-Transport-Security` only on answers served over TLS (`scheme` https,
  also as told by a trusted proxy's `X-Forwarded-Proto`): over plain HTTP it
  would be ignored anyway, and a local run must stay reachable over http.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.csp import content_security_policy
from metering.settings import Settings

Headers = list[tuple[bytes, bytes]]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Paths answered with JSON; everything else is a page or a page's asset.
API_PREFIXES = ("/v1/", "/openapi.json", "/healthz", "/livez", "/readyz", "/metrics")


class SecurityHeaders:
    """Adds the headers above to every `http.response.start` of the app."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        common: Headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        self.api_headers = [*common, (b"content-security-policy", API_CSP.encode())]
        self.page_headers = [
            *common,
            (b"content-security-policy", content_security_policy(settings).encode()),
        ]
        hsts: Headers = []
        if settings.http_hsts_max_age_s > 0:
            hsts = [
                (b"strict-transport-security", f"max-age={settings.http_hsts_max_age_s}".encode())
            ]
        self.api_tls_headers = self.api_headers + hsts
        self.page_tls_headers = self.page_headers + hsts

    def headers_for(self, scope: Scope) -> Headers:
        """The headers an answer to this request carries (also used by the
        switch's fast path, which answers outside this layer)."""
        api = scope["path"].startswith(API_PREFIXES)
        if scope["scheme"] == "https":
            return self.api_tls_headers if api else self.page_tls_headers
        return self.api_headers if api else self.page_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers_for(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
