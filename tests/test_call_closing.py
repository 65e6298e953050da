"""Closing a call, whatever happens around it: the switch's late commit corrects
an expired call's charge (once, within a window), an extend at the duration cap
says so in its own code, and a full ledger backlog never blocks a call's
closing into a worse charge. Time windows are seconds, made short by settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devkit.testing import PER_SECOND_RATE_CARD, GatewayProcess
from metering import accounts, credits, debits, reservations
from metering.errors import CallClosed, LedgerBacklogFull
from metering.ledger import registry
from metering.rate_card import RateCard
from metering.store import Store
from metering.sweeper import expire_due_reservations
from tests.conftest import OPS, SWITCH, make_account
from tests.fixtures_ledger import LedgerWorld, ledger_world

PER_SECOND = PER_SECOND_RATE_CARD  # a second costs 1,000 micros
FUNDS = 1_000_000
GRANT_S = 2
DURATION_MAX_S = 4


@pytest.fixture(scope="module")
async def calls_world() -> AsyncIterator[tuple[LedgerWorld, GatewayProcess]]:
    """A gateway whose sweeper runs every 0.1 s, with 2 s grants, no grace and
    calls of at most 4 s."""
    async with ledger_world(
        reservation_sweep_interval_s=0.1,
        call_grant_s=GRANT_S,
        call_validity_grace_s=0,
        call_duration_s_max=DURATION_MAX_S,
    ) as world:
        gateway = GatewayProcess(world.settings)
        try:
            yield world, gateway
        finally:
            gateway.stop()


async def funded_account(http: httpx.AsyncClient) -> str:
    return await make_account(http, FUNDS, PER_SECOND)


async def open_call(http: httpx.AsyncClient, account_id: str, call_id: str) -> dict[str, Any]:
    r = await http.post(
        "/v1/calls",
        headers=SWITCH,
        json={"account_id": account_id, "call_id": call_id, "direction": "outbound"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def until_expired(http: httpx.AsyncClient, account_id: str) -> None:
    """The gateway's own sweeper closes the forgotten call: no request needed."""
    deadline = time.monotonic() + GRANT_S + 5
    while True:
        r = await http.get(f"/v1/accounts/{account_id}", headers=OPS)
        if r.json()["open_calls"] == 0:
            return
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)


async def test_late_commit_corrects_an_expired_call_to_its_real_duration_once(
    calls_world: tuple[LedgerWorld, GatewayProcess],
) -> None:
    world, gateway = calls_world
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        a = await funded_account(http)
        assert (await open_call(http, a, "c1"))["granted_seconds"] == GRANT_S
        await until_expired(http, a)
        view = (await http.get(f"/v1/accounts/{a}", headers=OPS)).json()
        assert view["balance_micros"] == FUNDS - 2_000  # the whole grant, by policy

        # The switch's real report arrives late: a 1 s call.
        commit = {"account_id": a, "duration_seconds": 1}
        r = await http.post("/v1/calls/c1/commit", headers=SWITCH, json=commit)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["charged_micros"], body["billed_seconds"], body["correction_micros"]) == (
            1_000,
            1,
            1_000,
        )
        assert body["balance_micros"] == FUNDS - 1_000
        # Once: a retry replays the answer and moves nothing; another duration is refused.
        again = await http.post("/v1/calls/c1/commit", headers=SWITCH, json=commit)
        assert again.status_code == 200 and again.json() == body, again.text
        other = await http.post(
            "/v1/calls/c1/commit", headers=SWITCH, json={"account_id": a, "duration_seconds": 2}
        )
        assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict"

        # A late release (the call never connected) refunds the whole expiry.
        await open_call(http, a, "c2")
        await until_expired(http, a)
        r = await http.post("/v1/calls/c2/release", headers=SWITCH, json={"account_id": a})
        assert r.status_code == 200, r.text
        assert (r.json()["charged_micros"], r.json()["correction_micros"]) == (0, 2_000)
        assert r.json()["balance_micros"] == FUNDS - 1_000

    # The window is bounded: past it, the expiry stands.
    await reservations.reserve(world.store, a, "c3", "outbound")
    await asyncio.sleep(GRANT_S + 0.1)
    await expire_due_reservations(world.store)
    closed_window = Store(
        world.store.redis, world.store.scripts, world.settings.replace(call_late_commit_window_s=0)
    )
    with pytest.raises(CallClosed) as refused:
        await reservations.commit(closed_window, a, "c3", 1)
    assert refused.value.details["state"] == "expired"

    # The ledger says what happened, and it reconciles.
    done = world.cli("ledger-writer", "--drain")
    assert done.returncode == 0, done.stderr
    rows = await world.conn.fetch(
        "SELECT seq, item, amount_micros, request_id, detail FROM ledger_entries "
        "WHERE account_id = $1 ORDER BY seq",
        a,
    )
    entries = [
        (r["item"], r["amount_micros"], r["request_id"], r["detail"].split()[0]) for r in rows
    ]
    assert entries == [
        ("funds_added", FUNDS, "initial", entries[0][3]),
        ("call_outbound", -2_000, "c1", "expired"),
        ("call_outbound", 1_000, "c1", "late_commit"),
        ("call_outbound", -2_000, "c2", "expired"),
        ("call_outbound", 2_000, "c2", "late_release"),
        ("call_outbound", -2_000, "c3", "expired"),
    ], entries
    check = world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr


async def test_extend_at_the_duration_cap_answers_call_duration_limit_not_insufficient_funds(
    calls_world: tuple[LedgerWorld, GatewayProcess],
) -> None:
    _, gateway = calls_world
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        a = await funded_account(http)
        await open_call(http, a, "long")
        r = await http.post("/v1/calls/long/extend", headers=SWITCH, json={"account_id": a})
        assert r.status_code == 200 and r.json()["total_granted_seconds"] == DURATION_MAX_S, r.text
        r = await http.post("/v1/calls/long/extend", headers=SWITCH, json={"account_id": a})
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["error"] == "call_duration_limit" and body["limit_seconds"] == DURATION_MAX_S
        assert body["message"], body
        # The money was there all along.
        view = (await http.get(f"/v1/accounts/{a}", headers=OPS)).json()
        assert view["available_micros"] > 100 * 1_000, view
        r = await http.post(
            "/v1/calls/long/commit", headers=SWITCH, json={"account_id": a, "duration_seconds": 4}
        )
        assert r.status_code == 200 and r.json()["charged_micros"] == 4_000, r.text


async def test_full_ledger_backlog_never_blocks_closing_a_call_into_a_worse_charge() -> None:
    backlog_max = 3
    async with ledger_world(
        ledger_backlog_max=backlog_max, call_grant_s=GRANT_S, call_validity_grace_s=0
    ) as world:
        store = world.store
        a = "backlog"
        await registry.create_account(store, world.pool, a, RateCard.parse(PER_SECOND))
        await credits.add_funds(store, a, "funds", FUNDS, "ops_credit")  # entry 1
        await reservations.reserve(store, a, "talking", "outbound")
        await reservations.reserve(store, a, "forgotten", "outbound")
        await debits.message(store, a, "m1", "outbound")  # entry 2
        await debits.message(store, a, "m2", "outbound")  # entry 3: the stream is full
        with pytest.raises(LedgerBacklogFull):
            await debits.message(store, a, "m3", "outbound")

        # The switch hangs up after 1 s: charged 1 s now, not refused.
        charge = await reservations.commit(store, a, "talking", 1)
        assert (charge.charged_micros, charge.billed_seconds) == (1_000, 1)
        # The sweeper does not stop either.
        await asyncio.sleep(GRANT_S + 0.1)
        assert await expire_due_reservations(store) == 1
        view = await accounts.get_account(store, a)
        assert (view.reserved_micros, view.open_calls) == (0, 0)
        # What bounds the stream: no new call opens while it is full.
        with pytest.raises(LedgerBacklogFull):
            await reservations.reserve(store, a, "new", "outbound")
        assert await world.stream_lengths() == backlog_max + 2  # one closing per open call

        done = world.cli("ledger-writer", "--drain")
        assert done.returncode == 0, done.stderr
        await reservations.reserve(store, a, "new", "outbound")
        check = world.cli("reconcile")
        assert check.returncode == 0, check.stdout + check.stderr
