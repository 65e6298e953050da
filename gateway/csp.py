"""The pages' Content-Security-Policy, built once from settings.

The pages load only their own files plus Stripe.js from the configured origin
(settings.stripe_js_url); everything else is refused. Stripe's own hosted
Stripe.js also needs the API and 3-D Secure hosts Stripe documents for it
(https://docs.stripe.com/security/guide#content-security-policy); a local
Stripe serves its script and its API from one origin.
"""

from __future__ import annotations

import urllib.parse

from metering.settings import Settings

# What Stripe documents for https://js.stripe.com/v3/ beyond the script's origin.
STRIPE_HOSTED_EXTRA = {
    "https://js.stripe.com": {
        "connect-src": ("https://api.stripe.com",),
        "frame-src": ("https://hooks.stripe.com",),
    }
}


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    """The header value for every page (dashboard, ops, receipt)."""
    stripe = origin_of(settings.stripe_js_url)
    extra = STRIPE_HOSTED_EXTRA.get(stripe, {})
    directives = {
        "default-src": ("'none'",),
        "script-src": ("'self'", stripe),
        "style-src": ("'self'",),
        "img-src": ("'self'", "data:"),
        "font-src": ("'self'",),
        # 'self' covers the page's own websocket (ws/wss of the same host).
        "connect-src": ("'self'", stripe, *extra.get("connect-src", ())),
        "frame-src": (stripe, *extra.get("frame-src", ())),
        "form-action": ("'self'",),
        "base-uri": ("'none'",),
        "object-src": ("'none'",),
        "frame-ancestors": ("'none'",),
    }
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())
