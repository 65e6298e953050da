"""Outbound webhooks (all their SQL): registration, signing, and the delivery
records the notifier works from.

Signature, in the shape of Stripe's: the header
`Metering-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
keyed with the endpoint's secret (shown once, at registration). The README has
the receiver's check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import secrets
import time
import urllib.parse
from typing import Any

import orjson

from metering import fields
from metering.errors import InvalidRequest, MeteringError
from metering.events import EVENT_TYPES
from metering.ledger.database import acquire
from metering.settings import Settings

SIGNATURE_HEADER = "Metering-Signature"
URL_LENGTH_MAX = 2_048
DESCRIPTION_LENGTH_MAX = 200
ERROR_TEXT_MAX = 300


class UnknownWebhook(MeteringError):
    code = "not_found"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The Metering-Signature header value for one delivery."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def is_private_address(host: str) -> bool:
    address = ipaddress.ip_address(host)
    return not address.is_global


async def check_target(url: Any, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or (for customers) one that reaches a
    loopback, private or link-local address (the gateway's own network)."""
    if not isinstance(url, str) or len(url) > URL_LENGTH_MAX:
        raise InvalidRequest("url", f"url must be a string of at most {URL_LENGTH_MAX} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url", "url must be an http:// or https:// address with a host")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
    except OSError:
        raise InvalidRequest("url", f"the host {parts.hostname} does not resolve") from None
    if any(is_private_address(str(info[4][0]).split("%")[0]) for info in infos):
        raise InvalidRequest(
            "url", "url must reach a public address (not loopback, private or link-local)"
        )


def parse_events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > len(EVENT_TYPES):
        raise InvalidRequest("events", "events must be a non-empty list of event types")
    for item in value:
        if item not in EVENT_TYPES:
            raise InvalidRequest(
                "events", f"unknown event type {item!r}; known: {', '.join(EVENT_TYPES)}"
            )
    return sorted(set(value))


SQL_INSERT = """
INSERT INTO webhooks (webhook_id, account_id, url, events, secret, description)
VALUES ($1, $2, $3, $4, $5, $6)"""
SQL_COUNT = "SELECT count(*) FROM webhooks WHERE account_id = $1 AND deleted_at IS NULL"
SQL_DELETE = """
UPDATE webhooks SET deleted_at = now()
WHERE webhook_id = $1 AND account_id IS NOT DISTINCT FROM $2 AND deleted_at IS NULL
RETURNING webhook_id"""
SQL_DROP_PENDING = """
UPDATE webhook_deliveries SET status = 'failed', last_error = 'webhook deleted'
WHERE webhook_id = $1 AND status = 'pending'"""
SQL_LIST = """
SELECT w.webhook_id, w.account_id, w.url, w.events, w.description, w.consecutive_failures,
       w.last_attempt_at, w.last_status_code, w.last_error, w.last_success_at, w.created_at,
       coalesce((SELECT json_agg(x ORDER BY x.created_at DESC) FROM (
           SELECT d.event_id, e.type, d.status, d.attempts, d.last_status_code, d.last_error,
                  d.last_attempt_at, d.succeeded_at, d.created_at
           FROM webhook_deliveries d JOIN account_events e USING (event_id)
           WHERE d.webhook_id = w.webhook_id ORDER BY d.created_at DESC LIMIT $2) x),
           '[]') AS recent
FROM webhooks w
WHERE w.deleted_at IS NULL AND ($1::text IS NULL OR w.account_id = $1)
  AND (NOT $3 OR w.consecutive_failures > 0)
ORDER BY w.created_at
LIMIT 1000"""


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    webhook_id: str
    account_id: str | None
    url: str
    events: list[str]
    secret: str
    description: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def register(
    pool: Any, settings: Settings, account_id: str | None, body: dict[str, Any]
) -> Registration:
    """Register an endpoint for an account (or, account_id None, for every account)."""
    if account_id is not None:
        fields.account_id(account_id)
    events = parse_events(body.get("events"))
    url = body.get("url")
    await check_target(url, settings.webhook_private_targets or account_id is None)
    assert isinstance(url, str)
    description = fields.text(body.get("description", ""), "description", DESCRIPTION_LENGTH_MAX)
    reg = Registration(
        "wh_" + secrets.token_hex(8),
        account_id,
        url,
        events,
        "whsec_" + secrets.token_urlsafe(24),
        description,
    )
    async with acquire(pool, settings.database_timeout_s) as conn, conn.transaction():
        if account_id is not None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", account_id)
            if await conn.fetchval(SQL_COUNT, account_id) >= settings.webhooks_per_account_max:
                raise InvalidRequest(
                    "url",
                    f"an account may register at most {settings.webhooks_per_account_max} "
                    "webhooks; delete one first",
                )
        await conn.execute(
            SQL_INSERT, reg.webhook_id, account_id, url, events, reg.secret, description
        )
    return reg


async def delete(pool: Any, settings: Settings, account_id: str | None, webhook_id: str) -> None:
    async with acquire(pool, settings.database_timeout_s) as conn, conn.transaction():
        if await conn.fetchval(SQL_DELETE, webhook_id, account_id) is None:
            raise UnknownWebhook(f"no webhook {webhook_id!r} here")
        await conn.execute(SQL_DROP_PENDING, webhook_id)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def list_webhooks(
    pool: Any,
    settings: Settings,
    account_id: str | None,
    failing_only: bool = False,
) -> list[dict[str, Any]]:
    """An account's webhooks (account_id) or every one, global and the accounts'
    (None), each with its recent deliveries; never the secret."""
    async with acquire(pool, settings.database_timeout_s) as conn:
        rows = await conn.fetch(
            SQL_LIST,
            account_id,
            settings.webhook_recent_deliveries_max,
            failing_only,
        )
    return [
        {
            "webhook_id": r["webhook_id"],
            "account_id": r["account_id"],
            "url": r["url"],
            "events": list(r["events"]),
            "description": r["description"],
            "failing": r["consecutive_failures"] > 0,
            "consecutive_failures": r["consecutive_failures"],
            "last_attempt_at": _iso(r["last_attempt_at"]),
            "last_status_code": r["last_status_code"],
            "last_error": r["last_error"],
            "last_success_at": _iso(r["last_success_at"]),
            "created_at": _iso(r["created_at"]),
            "recent_deliveries": orjson.loads(r["recent"]),
        }
        for r in rows
    ]


# ---- delivery records (the notifier) -----------------------------------------

SQL_DUE = """
SELECT event_id, webhook_id FROM webhook_deliveries
WHERE status = 'pending' AND next_attempt_at_us <= $1 AND NOT (webhook_id = ANY($2::text[]))
ORDER BY next_attempt_at_us LIMIT $3 FOR UPDATE SKIP LOCKED"""
SQL_LEASE = """
UPDATE webhook_deliveries d SET next_attempt_at_us = $3, lease_token = $4,
    attempts = d.attempts + 1
FROM webhooks w, account_events e
WHERE d.event_id = $1 AND d.webhook_id = $2 AND w.webhook_id = d.webhook_id
  AND e.event_id = d.event_id
RETURNING d.attempts, w.url, w.secret, w.account_id AS owner, e.type, e.account_id, e.data,
    e.at_us"""
SQL_SUCCEEDED = """
UPDATE webhook_deliveries SET status = 'succeeded', succeeded_at = now(), last_attempt_at = now(),
    last_status_code = $4, last_error = NULL, lease_token = NULL
WHERE event_id = $1 AND webhook_id = $2 AND lease_token = $3 AND status = 'pending'
RETURNING event_id"""
SQL_FAILED = """
UPDATE webhook_deliveries SET status = $4, next_attempt_at_us = $5, last_attempt_at = now(),
    last_status_code = $6, last_error = $7, lease_token = NULL
WHERE event_id = $1 AND webhook_id = $2 AND lease_token = $3 AND status = 'pending'
RETURNING event_id"""
SQL_HEALTH_OK = """
UPDATE webhooks SET consecutive_failures = 0, last_attempt_at = now(), last_status_code = $2,
    last_error = NULL, last_success_at = now() WHERE webhook_id = $1"""
SQL_HEALTH_FAILED = """
UPDATE webhooks SET consecutive_failures = consecutive_failures + 1, last_attempt_at = now(),
    last_status_code = $2, last_error = $3 WHERE webhook_id = $1"""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed attempt: the event's body, where it goes, and the lease."""

    event_id: str
    webhook_id: str
    lease_token: str
    attempt: int
    url: str
    secret: str
    customer_owned: bool
    body: bytes
    event_at_us: int


async def claim_due(pool: Any, settings: Settings, busy: set[str], slots: int) -> list[Delivery]:
    """Lease at most one due delivery per endpoint not busy here, up to slots."""
    now = time.time_ns() // 1_000
    lease_us = int((2 * settings.webhook_timeout_s + 5) * 1_000_000)
    out: list[Delivery] = []
    async with acquire(pool, settings.database_timeout_s) as conn, conn.transaction():
        rows = await conn.fetch(SQL_DUE, now, list(busy), max(slots * 4, 16))
        chosen: dict[str, str] = {}
        for r in rows:
            if r["webhook_id"] not in chosen and len(chosen) < slots:
                chosen[r["webhook_id"]] = r["event_id"]
        for webhook_id, event_id in chosen.items():
            token = secrets.token_hex(8)
            r = await conn.fetchrow(SQL_LEASE, event_id, webhook_id, now + lease_us, token)
            if r is None:
                continue
            payload = {
                "id": event_id,
                "type": r["type"],
                "account_id": r["account_id"],
                "created_us": r["at_us"],
                "data": orjson.loads(r["data"]),
            }
            out.append(
                Delivery(
                    event_id,
                    webhook_id,
                    token,
                    r["attempts"],
                    r["url"],
                    r["secret"],
                    r["owner"] is not None,
                    orjson.dumps(payload),
                    r["at_us"],
                )
            )
    return out


async def record_outcome(
    pool: Any,
    settings: Settings,
    delivery: Delivery,
    status_code: int | None,
    error: str | None,
) -> str:
    """Record one attempt; returns the delivery's status now ('succeeded',
    'pending' for a retry, 'failed' past the retry window, or 'lost' when the lease
    was taken over meanwhile)."""
    ok = status_code is not None and 200 <= status_code < 300 and error is None
    error = (error or "")[:ERROR_TEXT_MAX] or None
    async with acquire(pool, settings.database_timeout_s) as conn, conn.transaction():
        if ok:
            done = await conn.fetchval(
                SQL_SUCCEEDED,
                delivery.event_id,
                delivery.webhook_id,
                delivery.lease_token,
                status_code,
            )
            await conn.execute(SQL_HEALTH_OK, delivery.webhook_id, status_code)
            return "succeeded" if done else "lost"
        now = time.time_ns() // 1_000
        backoff_s = min(
            settings.webhook_backoff_base_s * 2 ** (delivery.attempt - 1),
            settings.webhook_backoff_max_s,
        )
        next_at = now + int(backoff_s * 1_000_000)
        give_up = next_at > delivery.event_at_us + int(settings.webhook_retry_window_s * 1e6)
        status = "failed" if give_up else "pending"
        if error is None:
            error = f"HTTP {status_code}"
        done = await conn.fetchval(
            SQL_FAILED,
            delivery.event_id,
            delivery.webhook_id,
            delivery.lease_token,
            status,
            next_at,
            status_code,
            error,
        )
        await conn.execute(SQL_HEALTH_FAILED, delivery.webhook_id, status_code, error)
        return status if done else "lost"
