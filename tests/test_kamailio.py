"""A real switch on the line: Debian's Kamailio with integrations/kamailio/
prepays SIPp calls through a real gateway (its own Redis and Postgres schema,
the ledger writer in the gateway).

Call time is shortened by settings: grants of METERING_CALL_GRANT_S=2 s, an
extend 1 s before each runs out, and talk times a fifth of the issue's (its
30 s, 60 s and 120 s calls are 6 s, 12 s and 24 s here). The rate card bills
per second (1 s minimum, 1 s increment) at 1,000 micros a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.testing import RATE_CARD, GatewayProcess
from tests.conftest import OPS, new_account_id
from tests.fixtures_ledger import LedgerWorld, ledger_world
from tests.sip_rig import SIPP_DIR, CallLog, Kamailio, Sipp, scenario

GRANT_S = 2
EXTEND_LEAD_MS = 1_000
MICROS_PER_S = 1_000
PER_SECOND = {
    **RATE_CARD,
    "call_outbound_per_minute_micros": 60 * MICROS_PER_S,
    "call_increment_seconds": 1,
    "call_minimum_seconds": 1,
}
# The grant timer ticks every 100 ms; a BYE it sends reaches SIPp within this.
CUT_LATE_MS_MAX = 600
LEDGER_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[LedgerWorld]:
    async with ledger_world(
        call_grant_s=GRANT_S,
        ledger_writer_in_gateway=True,
        reservation_sweep_interval_s=0.2,
    ) as w:
        yield w


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switch")


@pytest.fixture(scope="module")
def metered_gateway(world: LedgerWorld, workdir: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(world.settings, log_path=workdir / "gateway.log")
    yield gateway
    gateway.stop()


def start_switch(gateway: GatewayProcess, workdir: Path, **defines: str | int) -> Kamailio:
    """Kamailio in front of `gateway`, with the test's short extend lead and retry."""
    return Kamailio(
        workdir,
        METERING_GATEWAY_URL=gateway.url,
        METERING_SWITCH_TOKEN=gateway.settings.switch_token,
        METERING_HTTP_TIMEOUT_S=1,
        METERING_EXTEND_LEAD_MS=EXTEND_LEAD_MS,
        METERING_RETRY_MS=400,
        **defines,
    )


@pytest.fixture(scope="module")
def switch(metered_gateway: GatewayProcess, workdir: Path) -> Iterator[Kamailio]:
    kamailio = start_switch(metered_gateway, workdir)
    yield kamailio
    kamailio.stop()


@pytest.fixture(scope="module")
def callee(workdir: Path, switch: Kamailio) -> Iterator[Sipp]:
    sipp = Sipp.callee(workdir)
    yield sipp
    sipp.stop()


async def new_account(
    gateway: GatewayProcess, balance_micros: int, max_concurrent_calls: int = 0
) -> str:
    account_id = new_account_id("sip")
    async with httpx.AsyncClient(base_url=gateway.url, headers=OPS) as http:
        body = {
            "account_id": account_id,
            "rate_card": PER_SECOND,
            "max_concurrent_calls": max_concurrent_calls,
        }
        r = await http.post("/v1/accounts", json=body)
        assert r.status_code == 201, r.text
        r = await http.post(
            f"/v1/accounts/{account_id}/credits",
            json={"credit_id": "funds", "amount_micros": balance_micros, "reason": "test"},
        )
        assert r.status_code == 200, r.text
    return account_id


async def account(gateway: GatewayProcess, account_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.url, headers=OPS) as http:
        r = await http.get(f"/v1/accounts/{account_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


async def call_rows(world: LedgerWorld, account_id: str, count: int) -> list[dict[str, Any]]:
    """The account's call entries in Postgres once the writer moved `count` of them."""
    deadline = time.monotonic() + LEDGER_TIMEOUT_S
    while True:
        rows = await world.conn.fetch(
            "SELECT * FROM ledger_entries WHERE account_id = $1 ORDER BY seq", account_id
        )
        calls = [dict(r) for r in rows if r["item"].startswith("call_")]
        if len(calls) >= count or time.monotonic() > deadline:
            return calls
        await asyncio.sleep(0.1)


def billed_s(row: dict[str, Any]) -> int:
    detail = dict(part.split("=", 1) for part in row["detail"].split() if "=" in part)
    return int(detail["billed_s"])


async def place(
    workdir: Path,
    switch: Kamailio,
    callee: Sipp,
    account_id: str,
    hold_ms: int,
    calls: int = 1,
    reinvite_at_ms: int = 0,
    rate_per_s: int = 10,
) -> CallLog:
    caller = Sipp.caller(
        workdir,
        switch,
        callee,
        account_id,
        scenario(workdir, hold_ms, reinvite_at_ms),
        calls=calls,
        rate_per_s=rate_per_s,
    )
    return await asyncio.to_thread(caller.wait)


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())


async def test_calls_complete_then_the_one_that_outruns_the_balance_is_cut(
    world: LedgerWorld,
    metered_gateway: GatewayProcess,
    switch: Kamailio,
    callee: Sipp,
    workdir: Path,
) -> None:
    # Money for 22 s of calls: 6 s and 12 s complete, the 24 s call gets the last 4 s.
    balance_micros = 22 * MICROS_PER_S
    account_id = await new_account(metered_gateway, balance_micros)
    logs = [
        await place(workdir, switch, callee, account_id, hold_ms) for hold_ms in (6_000, 12_000)
    ]
    # The re-INVITE at 3 s must not restart the clock: the BYE still comes at 4 s.
    logs.append(await place(workdir, switch, callee, account_id, 24_000, reinvite_at_ms=3_000))
    refused = await place(workdir, switch, callee, account_id, 1_000)

    short, longer, cut = (next(iter(log.events)) for log in logs)
    for log, call_id in ((logs[0], short), (logs[1], longer)):
        assert set(log.events[call_id]) == {"answered", "hangup"}, switch.log()[-4000:]
    assert set(logs[2].events[cut]) == {"answered", "reinvited", "cut"}, switch.log()[-4000:]
    # BYE on both legs: the callee got one too.
    assert await wait_until(lambda: cut in callee.calls().with_event("bye")), switch.log()[-4000:]
    cut_ms = logs[2].talk_ms(cut)
    assert 4_000 - 100 <= cut_ms <= 4_000 + CUT_LATE_MS_MAX, cut_ms
    assert list(refused.refusals.values()) == [402]

    rows = await call_rows(world, account_id, 3)
    assert [r["request_id"] for r in rows] == [f"{c}:1" for c in (short, longer, cut)]
    assert [billed_s(r) for r in rows] == [6, 12, 4]
    assert [r["amount_micros"] for r in rows] == [-6_000, -12_000, -4_000]
    assert [r["balance_after_micros"] for r in rows] == [16_000, 4_000, 0]
    final = await account(metered_gateway, account_id)
    assert (final["balance_micros"], final["reserved_micros"], final["open_calls"]) == (0, 0, 0)

    talk_s = [log.talk_ms(c) / 1000 for log, c in zip(logs, (short, longer, cut), strict=True)]
    worst = max(abs(t - billed_s(r)) for t, r in zip(talk_s, rows, strict=True))
    assert worst < 1.0
    print(
        f"\nprepaid run: placed 4, connected 3, cut 1, refused 1 (402); SIPp talk times "
        f"{talk_s} s, billed {[billed_s(r) for r in rows]} s; largest difference {worst:.3f} s"
    )


async def test_fifty_concurrent_calls_against_a_cap_of_ten(
    world: LedgerWorld,
    metered_gateway: GatewayProcess,
    switch: Kamailio,
    callee: Sipp,
    workdir: Path,
) -> None:
    balance_micros = 1_000 * MICROS_PER_S
    account_id = await new_account(metered_gateway, balance_micros, max_concurrent_calls=10)
    log = await place(workdir, switch, callee, account_id, 3_000, calls=50, rate_per_s=50)

    connected = log.with_event("answered")
    assert len(log.events) == 50
    assert len(connected) == 10, switch.log()[-4000:]
    assert sorted(log.refusals.values()) == [486] * 40
    assert all(set(log.events[c]) == {"answered", "hangup"} for c in connected)

    rows = await call_rows(world, account_id, 10)
    assert sorted(r["request_id"] for r in rows) == sorted(f"{c}:1" for c in connected)
    by_call = {r["request_id"].rsplit(":", 1)[0]: r for r in rows}
    worst = max(abs(log.talk_ms(c) / 1000 - billed_s(by_call[c])) for c in connected)
    assert worst < 1.0
    final = await account(metered_gateway, account_id)
    charged = -sum(r["amount_micros"] for r in rows)
    assert final["balance_micros"] == balance_micros - charged
    assert (final["reserved_micros"], final["open_calls"]) == (0, 0)
    assert await wait_until(lambda: not switch.table("mcall") and not switch.table("mout"))
    print(
        f"\ncap run: placed 50, connected {len(connected)}, refused {len(log.refusals)} (486); "
        f"largest difference between SIPp and billed {worst:.3f} s"
    )


async def test_cancelled_and_declined_calls_are_released(
    world: LedgerWorld,
    metered_gateway: GatewayProcess,
    switch: Kamailio,
    workdir: Path,
) -> None:
    account_id = await new_account(metered_gateway, 100 * MICROS_PER_S)
    ringing = Sipp.callee(workdir, "callee-ring.xml")
    declining = Sipp.callee(workdir, "callee-decline.xml")
    try:
        cancel = Sipp.caller(workdir, switch, ringing, account_id, SIPP_DIR / "caller-cancel.xml")
        cancelled = await asyncio.to_thread(cancel.wait)
        declined = await place(workdir, switch, declining, account_id, 1_000)
    finally:
        ringing.stop()
        declining.stop()
    assert cancelled.with_event("cancelled"), switch.log()[-4000:]
    assert list(declined.refusals.values()) == [603]

    ids = [f"{c}:1" for c in (*cancelled.events, *declined.events)]
    assert await wait_until(lambda: not switch.table("mout"))
    for call_id in ids:
        call = await world.store.redis.hgetall(world.store.account_keys(account_id).call(call_id))
        assert call.get("state") == "released", (call_id, call)
    final = await account(metered_gateway, account_id)
    assert (final["balance_micros"], final["reserved_micros"], final["open_calls"]) == (
        100 * MICROS_PER_S,
        0,
        0,
    )
    assert await call_rows(world, account_id, 0) == []


async def test_gateway_outage_mid_call_fails_closed_and_bills_once(
    world: LedgerWorld,
    metered_gateway: GatewayProcess,
    switch: Kamailio,
    callee: Sipp,
    workdir: Path,
) -> None:
    account_id = await new_account(metered_gateway, 100 * MICROS_PER_S)
    caller = Sipp.caller(workdir, switch, callee, account_id, scenario(workdir, 8_000))
    assert await wait_until(lambda: caller.calls().with_event("answered"))
    metered_gateway.stop()
    try:
        # Fail-closed: a new call is refused with 503 while the gateway is away ...
        refused = await place(workdir, switch, callee, account_id, 1_000)
        assert list(refused.refusals.values()) == [503]
        # ... and the call in progress ends when its grant runs out: its extend failed.
        log = await asyncio.to_thread(caller.wait)
        (call_id,) = log.events
        assert set(log.events[call_id]) == {"answered", "cut"}
        assert await wait_until(lambda: call_id in callee.calls().with_event("bye"))
        assert GRANT_S * 1000 - 100 <= log.talk_ms(call_id) <= GRANT_S * 1000 + CUT_LATE_MS_MAX
        # The commit waits in the outbox, retried.
        pending = switch.table("mout")
        assert pending == {f"{call_id}:1": f"commit:{account_id}:{GRANT_S}"}, pending
        await asyncio.sleep(1.0)
    finally:
        metered_gateway.restart()

    assert await wait_until(lambda: not switch.table("mout")), switch.log()[-4000:]
    await call_rows(world, account_id, 1)
    await asyncio.sleep(1.0)  # a second commit, were there one, would land by now
    rows = await call_rows(world, account_id, 0)
    assert [(r["request_id"], billed_s(r)) for r in rows] == [(f"{call_id}:1", GRANT_S)]
    final = await account(metered_gateway, account_id)
    assert final["balance_micros"] == (100 - GRANT_S) * MICROS_PER_S
    assert (final["reserved_micros"], final["open_calls"]) == (0, 0)
    assert "gateway unreachable for the extend" in switch.log()


async def test_gateway_outage_fail_open_lets_calls_run_and_bills_once(
    world: LedgerWorld,
    metered_gateway: GatewayProcess,
    switch: Kamailio,
    callee: Sipp,
    workdir: Path,
) -> None:
    fail_open_max_s = 3
    open_switch = start_switch(
        metered_gateway,
        workdir,
        METERING_FAILURE_POLICY="open",
        METERING_FAIL_OPEN_MAX_S=fail_open_max_s,
    )
    try:
        account_id = await new_account(metered_gateway, 100 * MICROS_PER_S)
        caller = Sipp.caller(workdir, open_switch, callee, account_id, scenario(workdir, 8_000))
        assert await wait_until(lambda: caller.calls().with_event("answered"))
        metered_gateway.stop()
        try:
            # Fail-open: a new call connects, unmetered ...
            unmetered = await place(workdir, open_switch, callee, account_id, 1_000)
            assert [set(e) for e in unmetered.events.values()] == [{"answered", "hangup"}]
            # ... and the call in progress runs on past its 2 s grant for the
            # fail-open allowance, then ends.
            log = await asyncio.to_thread(caller.wait)
            (call_id,) = log.events
            assert set(log.events[call_id]) == {"answered", "cut"}
            assert await wait_until(lambda: call_id in callee.calls().with_event("bye"))
            ran_ms = log.talk_ms(call_id)
            limit_ms = (GRANT_S + fail_open_max_s) * 1000
            assert limit_ms - 100 <= ran_ms <= limit_ms + CUT_LATE_MS_MAX, ran_ms
        finally:
            metered_gateway.restart()
        assert await wait_until(lambda: not open_switch.table("mout")), open_switch.log()[-4000:]
        await call_rows(world, account_id, 1)
        await asyncio.sleep(1.0)  # a second commit, were there one, would land by now
        rows = await call_rows(world, account_id, 0)
        # The call is billed once, for the time it really ran; the unmetered one never.
        billed = round(ran_ms / 1000)
        assert [(r["request_id"], billed_s(r)) for r in rows] == [(f"{call_id}:1", billed)]
        final = await account(metered_gateway, account_id)
        assert final["balance_micros"] == (100 - billed) * MICROS_PER_S
        assert (final["reserved_micros"], final["open_calls"]) == (0, 0)
        assert "connects unmetered (fail-open)" in open_switch.log()
    finally:
        open_switch.stop()
