"""Account write-through: Postgres first, so Redis never holds an account that
Postgres lacks; and a gateway without Postgres still authorizes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from devkit.testing import RATE_CARD, GatewayProcess, free_port
from metering import accounts, credits
from metering.keys import token_key
from metering.rate_card import RateCard
from tests.conftest import OPS, SWITCH, url_with_port
from tests.fixtures_ledger import LedgerWorld, ledger_world


@pytest.fixture
async def world() -> AsyncIterator[LedgerWorld]:
    """A private Redis and Postgres schema for one test."""
    async with ledger_world() as w:
        yield w


def _without_postgres(world: LedgerWorld) -> GatewayProcess:
    # Nothing listens on a fresh free port: every Postgres connection is refused.
    dead = url_with_port(world.settings.database_url, free_port())
    return GatewayProcess(world.settings.replace(database_url=dead, database_timeout_s=1.0))


async def test_gateway_without_postgres_starts_and_authorizes(world: LedgerWorld) -> None:
    # An account made before the outage (directly in Redis: Postgres is not needed here).
    await accounts.create_account(world.store, "live-only", RateCard.parse(RATE_CARD))
    await credits.add_funds(world.store, "live-only", "c1", 1_000_000, "ops_credit")
    gateway = _without_postgres(world)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            r = await http.post(
                "/v1/messages",
                headers=SWITCH,
                json={"account_id": "live-only", "message_id": "m1", "direction": "outbound"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["balance_micros"] == 1_000_000 - RATE_CARD["sms_outbound_micros"]
            # Creating an account needs its durable copy first: refused, and Redis
            # holds nothing of it.
            r = await http.post(
                "/v1/accounts",
                headers=OPS,
                json={"account_id": "not-durable", "rate_card": RATE_CARD},
            )
            assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
            r = await http.get("/v1/accounts/not-durable", headers=OPS)
            assert r.status_code == 404
    finally:
        gateway.stop()


async def test_customer_endpoints_answer_503_not_500_while_postgres_is_down(
    world: LedgerWorld,
) -> None:
    """Pay now, the card, recharge settings and the activity need Postgres: while it
    is unreachable each answers the documented 503 (retry), never a 500."""
    await accounts.create_account(world.store, "pg-down", RateCard.parse(RATE_CARD))
    token = "customer-token-pg-down"
    await world.store.redis.set(token_key(accounts.token_digest(token)), "pg-down")
    customer = {"Authorization": f"Bearer {token}"}
    gateway = _without_postgres(world)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            base = "/v1/accounts/pg-down"
            recharge = {
                "amount_micros": 60_000_000,
                "threshold_micros": 10_000_000,
                "failure_email": "a@example.com",
                "enabled": False,
            }
            for method, path, body in (
                ("POST", base + "/payments", {"payment_id": "p1", "amount_micros": 5_000_000}),
                ("PUT", base + "/card", {"payment_method_id": "pm_card_visa"}),
                ("DELETE", base + "/card", None),
                ("PUT", base + "/recharge", recharge),
                ("GET", base + "/activity", None),
            ):
                r = await http.request(method, path, headers=customer, json=body)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.json()["error"] == "unavailable", r.text
    finally:
        gateway.stop()


async def test_account_and_token_are_written_through_to_postgres(world: LedgerWorld) -> None:
    gateway = GatewayProcess(world.settings)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
            r = await http.post(
                "/v1/accounts",
                headers=OPS,
                json={"account_id": "durable-1", "rate_card": RATE_CARD, "max_concurrent_calls": 3},
            )
            assert r.status_code == 201, r.text
            created_at_us = r.json()["created_at_us"]
            r = await http.post(
                "/v1/accounts",
                headers=OPS,
                json={"account_id": "durable-1", "rate_card": RATE_CARD, "max_concurrent_calls": 3},
            )
            assert r.status_code == 201, r.text  # the same creation again answers alike
            other = {**RATE_CARD, "sms_outbound_micros": 1}
            r = await http.post(
                "/v1/accounts", headers=OPS, json={"account_id": "durable-1", "rate_card": other}
            )
            assert r.status_code == 409, r.text
            r = await http.post(
                "/v1/accounts/durable-1/tokens", headers=OPS, json={"label": "dashboard"}
            )
            assert r.status_code == 201, r.text
    finally:
        gateway.stop()
    row = await world.conn.fetchrow("SELECT * FROM accounts WHERE id = 'durable-1'")
    assert row["sms_outbound_micros"] == RATE_CARD["sms_outbound_micros"]
    assert row["max_concurrent_calls"] == 3 and row["created_at_us"] == created_at_us
    token_row = await world.conn.fetchrow("SELECT * FROM customer_tokens")
    assert token_row["account_id"] == "durable-1" and token_row["label"] == "dashboard"


async def test_accounts_command_creates_durably_and_lists(world: LedgerWorld) -> None:
    import json

    card = json.dumps(RATE_CARD)
    made = world.cli(
        "accounts", "create", "cli-1", "--rate-card", card, "--token", "dash", "--json"
    )
    assert made.returncode == 0, made.stdout + made.stderr
    body = json.loads(made.stdout)
    assert body["created"] is True and body["token"]
    assert await accounts.account_for_token(world.store, body["token"]) == "cli-1"
    assert await world.conn.fetchval("SELECT count(*) FROM accounts WHERE id = 'cli-1'") == 1
    bad = world.cli("accounts", "create", "cli-2", "--rate-card", "{}")
    assert bad.returncode == 4 and "rate_card" in bad.stderr
    listed = world.cli("accounts", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("cli-1\tbalance $0.00")


async def test_token_for_an_account_made_before_write_through(world: LedgerWorld) -> None:
    from metering.ledger import registry

    await accounts.create_account(world.store, "redis-only", RateCard.parse(RATE_CARD), 2)
    token = await registry.issue_customer_token(world.store, world.pool, "redis-only", "dash")
    assert await accounts.account_for_token(world.store, token) == "redis-only"
    row = await world.conn.fetchrow("SELECT * FROM accounts WHERE id = 'redis-only'")
    assert row["max_concurrent_calls"] == 2
    assert row["number_purchase_micros"] == RATE_CARD["number_purchase_micros"]
    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout
