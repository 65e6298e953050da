"""The switch's endpoints as one plain ASGI layer in front of Starlette.

A switch request (POST to one of the switch's paths, with the switch's bearer
token) is answered here: the path picked from a dict, the body read, checked
(`strict_json`) and decoded (`decode`) exactly as the Starlette handlers do,
the same action run (gateway/switch_api.py), the answer encoded by msgspec and
errors mapped by the one table (gateway/errors.py). Its answers carry the
security headers (gateway/security_headers.py) and, with request metrics on,
the request id, and their duration is recorded as the observer records it
(gateway/observe.py): inline, since each ASGI layer a request passes through
costs its every resumption (measured: the observer as a layer of its own cost
15-25% of a switch request's server CPU over HTTP). Everything else, including
a switch path with any other token (401, 403, a customer's token), goes on to
the observer and Starlette unchanged.

Why: under load, Starlette's layers (two exception middlewares, the router
trying routes in order, the Request and Response objects, the lifespan state
wrapped per request) were a quarter of a gateway process's CPU on a request
that needs none of them (bench/README.md, profile).
"""

from __future__ import annotations

import hmac
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.bodies import BodyTooLarge, decode, strict_json
from gateway.errors import error_answer
from gateway.observe import HEADER, RequestIds, outcome_of
from gateway.switch_api import ACTIONS, CALL_ACTIONS
from metering.logs import request_id_var
from metering.metrics import METRICS
from metering.settings import Settings

Headers = list[tuple[bytes, bytes]]

CALLS = "/v1/calls/"
JSON_TYPE = (b"content-type", b"application/json")


class SwitchFastPath:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        security_headers: Callable[[Scope], Headers],
        ids: RequestIds | None,
    ) -> None:
        self.app = app
        self.token = settings.switch_token.encode()
        self.bytes_max = settings.request_body_bytes_max
        self.encode = msgspec.json.Encoder().encode
        self.security_headers = security_headers
        self.ids = ids
        self.bounds = METRICS.http_requests.bounds
        # The duration totals of each (route, status), found once: by the switch
        # path (or, for a call, its last segment) -> (route template, {status:
        # slots}); recorded into inline (metering/metrics.py, Histogram.slots).
        self.route_slots: dict[str, tuple[str, dict[int, list[float]]]] = {
            **{path: (path, {}) for path in ACTIONS},
            **{last: (f"{CALLS}{{call_id}}/{last}", {}) for last in CALL_ACTIONS},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        action = ACTIONS.get(path)
        call_id = ""
        route = path
        if action is None:
            # /v1/calls/{call_id}/<extend|commit|release>; a call id may hold '/'.
            head, _, route = path.rpartition("/")
            action = CALL_ACTIONS.get(route)
            call_id = head[len(CALLS) :] if head.startswith(CALLS) else ""
            if action is None or not call_id:
                await self.app(scope, receive, send)
                return
        authorization = content_type = length = given_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = authorization or value
            elif name == b"content-type":
                content_type = content_type or value
            elif name == b"content-length":
                length = length or value
            elif name == HEADER:
                given_id = given_id or value
        if authorization is None or not self._is_switch(authorization):
            await self.app(scope, receive, send)
            return
        if self.ids is None:
            await self._answer(scope, receive, send, action, call_id, content_type, length, None)
            return
        started = time.perf_counter()
        request_id = self.ids.make(given_id)
        # Not reset after: the server runs each request in a task of its own, whose
        # context ends with it (and its own error log after the app still has the id).
        request_id_var.set(request_id)
        status = 500  # failed before answering: the server's 500, as the observer counts
        try:
            status = await self._answer(
                scope, receive, send, action, call_id, content_type, length, request_id
            )
        finally:
            elapsed_s = time.perf_counter() - started
            template, by_status = self.route_slots[route]
            slots = by_status.get(status)
            if slots is None:
                key = (template, "POST", outcome_of(status))
                slots = by_status[status] = METRICS.http_requests.slots(key)
            slots[bisect_left(self.bounds, elapsed_s)] += 1
            slots[-1] += elapsed_s

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        action: Any,
        call_id: str,
        content_type: bytes | None,
        length: bytes | None,
        request_id: bytes | None,
    ) -> int:
        """Answer one switch request; returns the status sent (499 when the
        client went away first, as nginx names it)."""
        try:
            raw = await self._body(receive, length)
            if raw is None:
                return 499  # the client went away
            strict_json(content_type.decode("latin-1") if content_type else None, raw)
            answer = await action.run(scope["state"]["store"], decode(raw, action.body), call_id)
            status, data, extra = 200, self.encode(answer), None
        except Exception as exc:  # mapped by the one table, as Starlette's handlers do
            status, body, extra = error_answer(exc, "POST", scope["path"])
            data = self.encode(body)
        headers: Headers = [
            (b"content-length", b"%d" % len(data)),
            JSON_TYPE,
            *self.security_headers(scope),
        ]
        if extra:
            headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        if request_id is not None:
            headers.append((HEADER, request_id))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        return status

    def _is_switch(self, authorization: bytes) -> bool:
        """The switch's bearer token (as gateway/auth.py reads it), compared in
        constant time; anything else is left to Starlette's path."""
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        return (
            scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token, self.token)
        )

    async def _body(self, receive: Receive, length: bytes | None) -> bytes | None:
        bytes_max = self.bytes_max
        if length is not None and length.isdigit() and int(length) > bytes_max:
            raise BodyTooLarge(f"the request body is larger than {bytes_max} bytes")
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            raw += chunk
            if len(raw) > bytes_max:
                raise BodyTooLarge(f"the request body is larger than {bytes_max} bytes")
            if not message.get("more_body", False):
                return raw
