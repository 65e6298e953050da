"""Slow and greedy clients, cut off where the bytes arrive: deadlines for reading
a request's headers and its body, and a cap on connections per client address.

uvicorn has no header or body read timeout: a client trickling a byte every
second holds its connection (and a file descriptor) forever. The gateway
therefore serves with `GuardedHttpToolsProtocol`, uvicorn's httptools protocol
plus:

- a header deadline: a request's headers must be complete within
  `http_header_read_timeout_s` of its first byte (a new connection: of its
  opening). Past it the client gets `408` and the connection closes.
- a body deadline: the body must be complete within `http_body_read_timeout_s`
  of the end of the headers. Past it: `408` (if no answer began) and close.
- at most `http_connections_per_client_max` open connections per client
  address, websockets included (0: no cap, e.g. behind a proxy that caps
  per address itself). One more is answered `503` and closed at once.

The timers cost nothing on the hot path: a request whose headers and body
arrive in one read (every switch request) never arms one; a timer is armed only
when a read ends with a request still incomplete. `idle between requests` stays
uvicorn's keep-alive timeout (`http_keep_alive_s`).

The protocols find the process's `ConnectionGuard` in the lifespan state
(gateway/app.py); without one (the bench's bare app) they are plain uvicorn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from metering.settings import Settings

log = logging.getLogger(__name__)

# The lifespan state key under which the guard is found.
STATE_KEY = "connection_guard"


def _answer(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    """A complete HTTP answer written straight to the socket (no app involved)."""
    body = b'{"error":"%s","message":"%s"}' % (code.encode(), message.encode())
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\nx-content-type-options: nosniff\r\n"
        + extra
        + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        + body
    )


REQUEST_TIMEOUT_ANSWER = _answer(
    b"408 Request Timeout", "request_timeout", "the request was not received in time; send it again"
)
TOO_MANY_CONNECTIONS_ANSWER = _answer(
    b"503 Service Unavailable",
    "too_many_connections",
    "this address holds its most open connections; retry later",
    b"retry-after: 1\r\n",
)
# Reading phases of a connection.
FIRST_REQUEST, HEADERS, BODY = "first_request", "headers", "body"


@dataclasses.dataclass(slots=True)
class ConnectionGuardCounts:
    """Counters since the process started (for metrics)."""

    refused_per_client: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0


class ConnectionGuard:
    """One per gateway process: open connections by client address, and the deadlines."""

    def __init__(self, settings: Settings) -> None:
        self.header_timeout_s = settings.http_header_read_timeout_s
        self.body_timeout_s = settings.http_body_read_timeout_s
        self.per_client_max = settings.http_connections_per_client_max
        self.by_client: dict[str, int] = {}
        self.counts = ConnectionGuardCounts()

    def admit(self, client: str) -> bool:
        """Count a new connection from `client`; False when the address is at its cap."""
        held = self.by_client.get(client, 0)
        if self.per_client_max and held >= self.per_client_max:
            if self.counts.refused_per_client % 1000 == 0:
                log.warning(
                    "refusing a connection from %s: it holds %d (http_connections_per_client_max)",
                    client,
                    held,
                )
            self.counts.refused_per_client += 1
            return False
        self.by_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self.by_client.get(client, 0) - 1
        if held > 0:
            self.by_client[client] = held
        else:
            self.by_client.pop(client, None)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and the per-address cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard: ConnectionGuard | None = self.app_state.get(STATE_KEY)
        self._guard_client: str | None = None  # set while this protocol holds a slot
        self._phase: str | None = None
        self._phase_started = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        if guard is None:
            return
        client = self.client[0] if self.client else ""
        if not guard.admit(client):
            transport.write(TOO_MANY_CONNECTIONS_ANSWER)
            transport.close()
            return
        self._guard_client = client
        # A new connection must send its first request's headers in time too.
        self._phase, self._phase_started = FIRST_REQUEST, self.loop.time()
        self._arm(guard.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._phase = None
        if self._guard is not None and self._guard_client is not None:
            self._guard.release(self._guard_client)
            self._guard_client = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Arm a deadline only when this read left a request incomplete.
        if self._phase is not None and self._read_timer is None and self._guard is not None:
            timeout_s = (
                self._guard.body_timeout_s if self._phase == BODY else self._guard.header_timeout_s
            )
            self._arm(timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._guard is None:
            return
        if self._phase != FIRST_REQUEST:  # the first request's clock runs from the opening
            self._phase_started = self.loop.time()
        self._phase = HEADERS

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._guard is None:
            return
        self._disarm()
        self._phase, self._phase_started = BODY, self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._phase = None

    def handle_websocket_upgrade(self) -> None:
        # The websocket protocol takes the connection, and its slot.
        self._disarm()
        self._phase = None
        client, self._guard_client = self._guard_client, None
        super().handle_websocket_upgrade()
        if client is None or self._guard is None:
            return
        ws = self.transport.get_protocol()
        if isinstance(ws, GuardedWebSocketProtocol):
            ws.hold_slot(self._guard, client)
        else:
            self._guard.release(client)

    def _arm(self, timeout_s: float) -> None:
        when = self._phase_started + timeout_s
        self._read_timer = self.loop.call_at(when, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self._guard is None:
            return
        counts = self._guard.counts
        if self._phase == BODY:
            counts.body_timeouts += 1
            answered = self.cycle is not None and self.cycle.response_started
        else:
            counts.header_timeouts += 1
            # A connection that never sent a byte is closed without an answer.
            answered = self._phase == FIRST_REQUEST
        if not answered:
            self.transport.write(REQUEST_TIMEOUT_ANSWER)
        self._phase = None
        self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, holding its connection's per-address slot
    until the connection closes."""

    _guard_slot: tuple[ConnectionGuard, str] | None = None

    def hold_slot(self, guard: ConnectionGuard, client: str) -> None:
        self._guard_slot = (guard, client)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard_slot is not None:
            guard, client = self._guard_slot
            self._guard_slot = None
            guard.release(client)
        super().connection_lost(exc)
