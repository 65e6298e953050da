"""The outermost ASGI layer: a request id for every HTTP request, and its
duration recorded by route and outcome.

- The request id is the client's `X-Request-Id` when it is safe to echo (at most
  `request_id_length_max` characters of letters, digits and `._:-`), else one
  made here (this process's random prefix and a counter: unique without a
  system call). It is returned in the answer's `X-Request-Id` header and added
  to every log line written while the request is served (metering/logs.py).
- The duration goes to `metering_http_request_duration_seconds{route, method,
  outcome}`: route is the endpoint's template (`/v1/calls/{call_id}/commit`,
  never an id), outcome `allowed` (below 400), `refused` (402 and 429: the
  service said no to a well-formed request), `client_error` (other 4xx) or
  `server_error` (5xx).

The switch's requests never pass through this layer: the fast path
(gateway/fast_path.py) answers them outermost and does the same inline, since
a layer of its own cost every resumption of the request (measured over HTTP,
one process, hot account: 159 -> 203 µs of server CPU per request as a layer,
83 -> 88 µs inline; `python -m bench observability`).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.switch_api import ACTIONS, CALL_ACTIONS
from metering.logs import request_id_var
from metering.metrics import METRICS
from metering.settings import Settings

HEADER = b"x-request-id"
SAFE_ID = re.compile(rb"[A-Za-z0-9._:\-]+")
CALLS = "/v1/calls/"
UNMATCHED = "unmatched"


def outcome_of(status: int) -> str:
    if status < 400:
        return "allowed"
    if status in (402, 429):
        return "refused"
    if status < 500:
        return "client_error"
    return "server_error"


def route_of(scope: Scope) -> str:
    """The route template the request matched: Starlette's (it records the route
    in the scope), or the switch's fast path (gateway/fast_path.py), which
    answers before Starlette routes."""
    route = scope.get("route")
    if route is not None:
        template: str = getattr(route, "path", UNMATCHED)
        return template.replace(":path}", "}")
    path: str = scope["path"]
    if path in ACTIONS:
        return path
    if path.startswith(CALLS):
        last = path.rpartition("/")[2]
        if last in CALL_ACTIONS:
            return CALLS + "{call_id}/" + last
    return UNMATCHED


class RequestIds:
    """The request id of a request, as the bytes of its header: the client's when
    safe to echo, else one made here (this process's random prefix and a
    counter). Bytes, since the header needs them and the logs decode the id only
    when a line is written."""

    def __init__(self, settings: Settings) -> None:
        self.length_max = settings.request_id_length_max
        self.prefix = os.urandom(4).hex().encode() + b"-"
        self.counter = itertools.count(1)

    def of(self, scope: Scope) -> bytes:
        for name, value in scope["headers"]:
            if name == HEADER:
                return self.make(value)
        return self.make(None)

    def make(self, given: bytes | None) -> bytes:
        """The id of a request whose `X-Request-Id` header was `given`."""
        if given is not None and len(given) <= self.length_max and SAFE_ID.fullmatch(given):
            return given
        return self.prefix + b"%x" % next(self.counter)


class RequestObserver:
    """Every request but the switch's (which the fast path observes inline, one
    layer less on the authorize path: gateway/fast_path.py)."""

    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.request_id = ids.of
        self.observe = METRICS.http_requests.observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self.request_id(scope)
        header = (HEADER, request_id)
        status = 500  # an app that fails before answering: the server's 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers: Any = message.get("headers", ())
                message["headers"] = [*headers, header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            self.observe(
                (route_of(scope), scope["method"], outcome_of(status)),
                time.perf_counter() - started,
            )
