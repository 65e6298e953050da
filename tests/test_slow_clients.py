"""Slow and greedy clients cannot hold the gateway: headers and bodies trickled a
byte at a time are cut off at their read deadline, an address may hold only so
many connections, and meanwhile the switch's debits are answered as usual.
Deadlines are made short by settings; each test starts its own gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from devkit.testing import GatewayProcess
from metering.settings import Settings
from tests.conftest import SWITCH, make_account

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
TRICKLE_EVERY_S = 0.25
SLOW_HEADERS, SLOW_BODIES = 350, 150
# Loopback is 127.0.0.0/8 on Linux: the hostile client comes from another address
# than the well-behaved one, as it would in production.
HOSTILE_ADDRESS = "127.0.0.2"


@pytest.fixture(scope="module")
def slow_gateway(settings: Settings) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        settings.replace(
            http_header_read_timeout_s=HEADER_TIMEOUT_S,
            http_body_read_timeout_s=BODY_TIMEOUT_S,
            http_keep_alive_s=1.0,
        )
    )
    yield process
    process.stop()


async def trickle(port: int, head: bytes, body_bytes: int) -> tuple[float, bytes]:
    """Open a connection, send `head` (all of it when the body is trickled), then
    one byte every TRICKLE_EVERY_S; return (seconds until the server closed it,
    what it answered)."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(HOSTILE_ADDRESS, 0)
    )
    answer = b""
    trickled = head if body_bytes == 0 else b"x" * body_bytes
    if body_bytes:
        writer.write(head)
    closed_after = -1.0
    try:
        for i in range(len(trickled)):
            try:
                answer += await asyncio.wait_for(reader.read(4096), TRICKLE_EVERY_S)
            except TimeoutError:
                writer.write(trickled[i : i + 1])
                continue
            closed_after = time.monotonic() - opened
            break
    except (ConnectionError, OSError):
        closed_after = time.monotonic() - opened
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return closed_after, answer


async def test_500_slow_connections_are_cut_off_and_debits_are_answered_meanwhile(
    slow_gateway: GatewayProcess,
) -> None:
    port = slow_gateway.port
    async with httpx.AsyncClient(base_url=slow_gateway.url, timeout=10) as http:
        account_id = await make_account(http, 100_000_000)
        # Enough bytes that a trickle would last 20 s: only the deadline can end it.
        header = b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nX-Pad: " + b"a" * 80
        body_head = (
            b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: 80\r\nAuthorization: Bearer test-switch-token\r\n\r\n"
        )
        slow = [asyncio.create_task(trickle(port, header, 0)) for _ in range(SLOW_HEADERS)]
        slow += [asyncio.create_task(trickle(port, body_head, 80)) for _ in range(SLOW_BODIES)]
        await asyncio.sleep(0.3)  # every slow connection is open and trickling

        latencies_ms = []
        for i in range(40):
            started = time.perf_counter()
            r = await http.post(
                "/v1/messages",
                headers=SWITCH,
                json={"account_id": account_id, "message_id": f"m{i}", "direction": "outbound"},
            )
            latencies_ms.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.02)
        results = await asyncio.gather(*slow)

    closed = [after for after, _ in results if after >= 0]
    print(
        f"\n{len(closed)} of {len(results)} slow connections closed by the server; "
        f"latest after {max(closed, default=-1):.2f} s; debits during: "
        f"max {max(latencies_ms):.1f} ms, median {sorted(latencies_ms)[20]:.1f} ms"
    )
    assert len(closed) == len(results), "some slow connections were never closed"
    headers_closed = [after for after, _ in results[:SLOW_HEADERS]]
    bodies_closed = [after for after, _ in results[SLOW_HEADERS:]]
    # Closed at their deadline (counted from the opening), with scheduling slack.
    assert HEADER_TIMEOUT_S - 0.1 <= min(headers_closed) and max(headers_closed) < 3.5
    assert BODY_TIMEOUT_S - 0.1 <= min(bodies_closed) and max(bodies_closed) < 4.0
    # Each was told why, unless the reset beat the answer to the reader.
    told = [answer for _, answer in results if answer.startswith(b"HTTP/1.1 408")]
    assert len(told) >= len(results) * 0.9, len(told)
    assert b"request_timeout" in told[0]
    assert max(latencies_ms) < 1_000


async def test_a_request_split_within_its_deadlines_is_served(
    slow_gateway: GatewayProcess,
) -> None:
    async with httpx.AsyncClient(base_url=slow_gateway.url) as http:
        account_id = await make_account(http, 1_000_000)
    body = (
        f'{{"account_id": "{account_id}", "message_id": "split", "direction": "outbound"}}'
    ).encode()
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer test-switch-token\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", slow_gateway.port)
    try:
        for part in (head[:20], head[20:], body[:10], body[10:]):
            writer.write(part)
            await asyncio.sleep(0.2)
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        # The same connection then idles past the keep-alive and is closed.
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(4096), 5) == b""
        assert 0.5 < time.monotonic() - started < 3
    finally:
        writer.close()


@pytest.fixture(scope="module")
def capped_gateway(settings: Settings) -> Iterator[GatewayProcess]:
    process = GatewayProcess(settings.replace(http_connections_per_client_max=20))
    yield process
    process.stop()


def open_idle(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def is_refused(sock: socket.socket) -> bytes | None:
    """What the server sent before closing at once, or None if it kept the connection."""
    sock.settimeout(1.0)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionError:
        return b""
    return data if data == b"" or data.startswith(b"HTTP/1.1 503") else None


async def test_one_address_holds_at_most_its_connections_and_others_are_served(
    capped_gateway: GatewayProcess,
) -> None:
    port = capped_gateway.port
    # 19 idle connections and one live websocket: 20, the cap, from one address.
    held = [open_idle(port, HOSTILE_ADDRESS) for _ in range(19)]
    ws = await connect(
        f"ws://127.0.0.1:{port}/v1/ops/live?token=test-ops-token",
        local_addr=(HOSTILE_ADDRESS, 0),
    )
    try:
        assert (await ws.recv())[:20].startswith('{"type":"snapshot"')
        extra = open_idle(port, HOSTILE_ADDRESS)
        refused = is_refused(extra)
        extra.close()
        assert refused is not None, "a 21st connection from one address was kept"
        assert refused == b"" or b"too_many_connections" in refused
        # Another address is served as usual.
        async with httpx.AsyncClient(base_url=capped_gateway.url) as http:
            r = await http.get("/openapi.json")
            assert r.status_code == 200
        # The websocket's slot is freed when it closes, and taken again.
        await ws.close()
        await asyncio.sleep(0.3)
        again = open_idle(port, HOSTILE_ADDRESS)
        held.append(again)
        assert is_refused(again) is None
        beyond = open_idle(port, HOSTILE_ADDRESS)
        held.append(beyond)
        assert is_refused(beyond) is not None
    finally:
        await ws.close()
        for sock in held:
            sock.close()
