"""Logs: one JSON object per line, secrets masked whoever logs them, libraries
quiet unless asked, and the gateway's own log in that shape."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devkit.testing import GatewayProcess
from metering.logs import (
    LIBRARY_LOGGERS,
    JsonFormatter,
    Redactor,
    configure_logging,
    request_id_var,
    secrets_of,
)
from tests.conftest import OPS, test_settings


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("metering.test", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_carries_time_level_logger_message_fields_and_request_id() -> None:
    formatter = JsonFormatter()
    token = request_id_var.set("req-123")
    try:
        line = formatter.format(record("moved %d rows", 7, shard=3, writer="w-0"))
    finally:
        request_id_var.reset(token)
    out = json.loads(line)
    assert out["level"] == "warning" and out["logger"] == "metering.test"
    assert out["message"] == "moved 7 rows"
    assert out["shard"] == 3 and out["writer"] == "w-0" and out["request_id"] == "req-123"
    assert out["ts"].endswith("Z") and "T" in out["ts"]
    assert "\n" not in line
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = __import__("sys").exc_info()
    assert "ValueError: boom" in json.loads(formatter.format(rec))["exc"]


def test_secrets_are_masked_in_messages_fields_and_tracebacks() -> None:
    settings = test_settings(stripe_api_key="sk_live_abcdefghijkl", ops_token="the-ops-token-value")
    redact = Redactor(secrets_of(settings))
    formatter = JsonFormatter(redact)
    lines = [
        formatter.format(record("GET /v1/ops/live?token=abc.def-ghi&x=1")),
        formatter.format(record("Authorization: Bearer sk_live_abcdefghijkl")),
        formatter.format(record("connect postgresql://metering:hunter2secret@db:5432/m")),
        formatter.format(record("stripe said %s", "bad key sk_live_abcdefghijkl")),
        formatter.format(record("x", header="the-ops-token-value")),
    ]
    text = "\n".join(lines)
    for secret in ("abc.def-ghi", "sk_live_abcdefghijkl", "hunter2secret", "the-ops-token-value"):
        assert secret not in text
    assert "?token=<redacted>&x=1" in lines[0]
    assert "Bearer <redacted>" in lines[1]
    assert "postgresql://metering:<redacted>@db:5432/m" in lines[2]
    assert "x=1" in lines[0]  # only the secret goes


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def test_libraries_log_at_warning_unless_asked(restore_logging: None) -> None:
    configure_logging("debug", test_settings())
    assert logging.getLogger("metering.ledger").getEffectiveLevel() == logging.DEBUG
    for name in ("httpx", "stripe", "asyncpg", "asyncio"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    configure_logging("info", test_settings(log_libraries_level="info"))
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.INFO


def test_a_json_line_costs_microseconds() -> None:
    formatter = JsonFormatter(Redactor(secrets_of(test_settings())))
    rec = record("ledger writer %s: %d rows in the last %.0f s", "w-0", 1234, 10.0, shard=3)
    n = 2_000
    began = time.perf_counter()
    for _ in range(n):
        formatter.format(rec)
    each_us = (time.perf_counter() - began) / n * 1e6
    print(f"one JSON log line: {each_us:.1f} us")
    assert each_us < 200  # generous: a loaded CI machine; measured about 10 us


async def test_the_gateway_logs_json_lines_without_tokens(tmp_path: Path) -> None:
    log_path = tmp_path / "gateway.log"
    gateway = GatewayProcess(test_settings(log_level="info"), log_path=log_path)
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            r = await http.get("/v1/accounts/nobody", headers=OPS)
            assert r.status_code == 404
    finally:
        gateway.stop()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines, "the gateway logged nothing at info"
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("Started server process" in p["message"] for p in parsed)
    assert "test-ops-token" not in log_path.read_text()
