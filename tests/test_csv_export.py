"""The activity CSV opened as a spreadsheet opens it: no cell that came from a
caller (request ids come from the switch, and SIP Call-IDs from outside callers;
credit reasons from ops) is read as a formula, while the amounts stay numbers."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from devkit.testing import RATE_CARD, GatewayProcess
from metering.ledger.activity import CSV_COLUMNS, spreadsheet_text
from tests.conftest import OPS, SWITCH
from tests.fixtures_ledger import ledger_world

# Request ids are 1-128 of A-Z a-z 0-9 _ . : @ + = / - : each of these is one.
HOSTILE_IDS = ["=2+5", "=A1:A2", "+1555/=1+1", "@SUM", "-1+1", "=cmd/c:calc", "-2"]
HOSTILE_REASONS = ['=HYPERLINK("http://x.example","refund")', "\t=1+1", "@A1 goodwill"]
NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
NUMERIC_COLUMNS = {
    "seq",
    "amount_micros",
    "amount_usd",
    "balance_after_micros",
    "balance_after_usd",
}


def spreadsheet_reads_as_formula(cell: str) -> bool:
    """How Excel, LibreOffice Calc and Google Sheets treat a cell they import:
    a leading apostrophe makes the rest text; a plain number is a number; '=',
    '+', '-' or '@' first starts a formula, and a leading tab or carriage
    return is dropped by some of them before they look (OWASP, CSV Injection)."""
    if cell.startswith("'"):
        return False
    if NUMBER.fullmatch(cell):
        return False
    return cell.lstrip("\t\r ").startswith(("=", "+", "-", "@")) or cell.startswith(("\t", "\r"))


@pytest.fixture
async def gateway_with_writer() -> AsyncIterator[GatewayProcess]:
    async with ledger_world(ledger_writer_in_gateway=True, ledger_batch_wait_ms=20) as world:
        gateway = GatewayProcess(world.settings)
        try:
            yield gateway
        finally:
            gateway.stop()


async def test_the_csv_export_never_hands_a_spreadsheet_a_formula(
    gateway_with_writer: GatewayProcess,
) -> None:
    async with httpx.AsyncClient(base_url=gateway_with_writer.url, timeout=10) as http:
        account_id = "csv-hostile"
        r = await http.post(
            "/v1/accounts", headers=OPS, json={"account_id": account_id, "rate_card": RATE_CARD}
        )
        assert r.status_code == 201, r.text
        for n, reason in enumerate(HOSTILE_REASONS):
            r = await http.post(
                f"/v1/accounts/{account_id}/credits",
                headers=OPS,
                json={"credit_id": f"c{n}", "amount_micros": 5_000_000, "reason": reason},
            )
            assert r.status_code == 200, r.text
        for message_id in HOSTILE_IDS:
            r = await http.post(
                "/v1/messages",
                headers=SWITCH,
                json={"account_id": account_id, "message_id": message_id, "direction": "outbound"},
            )
            assert r.status_code == 200, r.text
        expected = len(HOSTILE_REASONS) + len(HOSTILE_IDS)
        for _ in range(100):  # the ledger writer in the gateway moves them to Postgres
            r = await http.get(f"/v1/accounts/{account_id}/activity.csv", headers=OPS)
            assert r.status_code == 200, r.text
            rows = list(csv.reader(io.StringIO(r.text, newline="")))
            if len(rows) == expected + 1:
                break
            await asyncio.sleep(0.1)
    header, *rows = rows
    assert tuple(header) == CSV_COLUMNS and len(rows) == expected
    formulas = [
        (header[i], cell)
        for row in rows
        for i, cell in enumerate(row)
        if spreadsheet_reads_as_formula(cell)
    ]
    assert formulas == [], formulas
    by_column = [dict(zip(header, row, strict=True)) for row in rows]
    # The text is all there, behind the apostrophe a spreadsheet shows as text.
    ids = {row["request_id"].removeprefix("'") for row in by_column}
    assert set(HOSTILE_IDS) <= ids
    details = " ".join(row["detail"] for row in by_column)
    for reason in HOSTILE_REASONS:
        assert reason in details, (reason, details)
    # Amounts are still numbers a spreadsheet adds up: debits stay negative.
    for row in by_column:
        for column in NUMERIC_COLUMNS:
            assert NUMBER.fullmatch(row[column]), (column, row[column])
    assert sum(int(row["amount_micros"]) for row in by_column) == int(
        by_column[0]["balance_after_micros"]
    )
    assert any(row["amount_usd"].startswith("-") for row in by_column)


def test_the_owasp_rule_neutralises_every_trigger_and_nothing_else() -> None:
    for trigger in ("=", "+", "-", "@", "\t", "\r"):
        cell = spreadsheet_text(trigger + "1+1")
        assert cell == "'" + trigger + "1+1" and not spreadsheet_reads_as_formula(cell)
    for text in ("sms_outbound", "outgoing text message", "a=b", "1+1", "", "'=quoted"):
        assert spreadsheet_text(text) == text
