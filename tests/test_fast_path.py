"""The switch's fast path (gateway/fast_path.py) answers exactly as Starlette's
handlers do: the same sequence of requests, sent through the gateway's whole
stack and through Starlette alone (on twin accounts), gets the same statuses,
bodies and headers."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from devkit.testing import RATE_CARD
from gateway.app import create_app
from gateway.auth_limits import AuthFailureLimiter
from metering import accounts, credits
from metering.rate_card import RateCard
from metering.store import Store
from tests.conftest import new_account_id

SWITCH = "Bearer test-switch-token"
JSON = "application/json"


async def asgi_call(
    app: Any,
    starlette: Starlette,
    store: Store,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {
            "store": store,
            "settings": store.settings,
            "auth_limiter": AuthFailureLimiter(store.settings),
        },
        "app": starlette,  # as Starlette.__call__ sets it
    }
    chunks = [body[:5], body[5:]]  # the body in two messages, as a client may send it

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, answer


def requests(account: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    sw = {"authorization": SWITCH, "content-type": JSON}
    msg = b'{"account_id":"%s","message_id":"m1","direction":"outbound"}' % account.encode()
    return [
        ("POST", "/v1/messages", sw, msg),
        ("POST", "/v1/messages", sw, msg),  # a replay
        ("POST", "/v1/messages", sw, msg.replace(b"outbound", b"inbound")),  # conflict
        ("POST", "/v1/messages", sw, msg.replace(b"m1", b"m|2")),
        ("POST", "/v1/messages", sw, msg.replace(account.encode(), b"nobody-here")),
        ("POST", "/v1/messages", sw, b'{"account_id": '),
        ("POST", "/v1/messages", sw, msg[:-1] + b',"direction":"inbound"}'),
        ("POST", "/v1/messages", sw, msg + b" {}"),
        ("POST", "/v1/messages", {**sw, "content-type": "text/plain"}, msg),
        ("POST", "/v1/messages", sw, msg[:-1] + b',"pad":"' + b"x" * 20_000 + b'"}'),
        ("POST", "/v1/messages", {**sw, "authorization": "Bearer wrong"}, msg),
        ("POST", "/v1/messages", {**sw, "authorization": "Bearer test-ops-token"}, msg),
        ("POST", "/v1/messages", {"content-type": JSON}, msg),
        (
            "POST",
            "/v1/ring-through-attempts",
            sw,
            b'{"account_id":"%s","attempt_id":"t1"}' % account.encode(),
        ),
        (
            "POST",
            "/v1/numbers/purchases",
            sw,
            b'{"account_id":"%s","purchase_id":"p1","number":"+15550100"}' % account.encode(),
        ),
        (
            "POST",
            "/v1/numbers/purchases",
            sw,
            b'{"account_id":"%s","purchase_id":"p2","number":"+15550101"}' % account.encode(),
        ),
        (
            "POST",
            "/v1/calls",
            sw,
            b'{"account_id":"%s","call_id":"sip/abc@host","direction":"outbound"}'
            % account.encode(),
        ),
        ("POST", "/v1/calls/sip/abc@host/extend", sw, b'{"account_id":"%s"}' % account.encode()),
        (
            "POST",
            "/v1/calls/sip/abc@host/commit",
            sw,
            b'{"account_id":"%s","duration_seconds":0}' % account.encode(),
        ),
        (
            "POST",
            "/v1/calls/sip/abc@host/commit",
            sw,
            b'{"account_id":"%s","duration_seconds":61}' % account.encode(),
        ),
        ("POST", "/v1/calls/sip/abc@host/release", sw, b'{"account_id":"%s"}' % account.encode()),
        ("POST", "/v1/calls/nope/release", sw, b'{"account_id":"%s"}' % account.encode()),
        ("POST", "/v1/calls//release", sw, b'{"account_id":"%s"}' % account.encode()),
        ("POST", "/v1/calls/x/hangup", sw, b"{}"),
        ("POST", "/v1/messages/", sw, msg),
    ]


async def test_the_fast_path_answers_as_starlette_does(store: Store) -> None:
    app = create_app(store.settings)
    whole = app.build_middleware_stack()  # security headers, fast path, Starlette
    starlette_only = Starlette.build_middleware_stack(app)
    answers: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
    for name, stack in (("fast", whole), ("slow", starlette_only)):
        account = new_account_id(f"fp-{name}")
        await accounts.create_account(store, account, RateCard.parse(RATE_CARD))
        await credits.add_funds(store, account, "c1", 1_500_000, "ops_credit", "test")
        got = []
        for method, path, headers, body in requests(account):
            status, head, answer = await asgi_call(stack, app, store, method, path, headers, body)
            assert head["content-length"] == str(len(answer)), (name, path)
            got.append((status, head, answer.replace(account.encode(), b"ACCOUNT")))
        answers[name] = got
    statuses = [a[0] for a in answers["fast"]]
    # The cases cover answers and every kind of refusal.
    assert {200, 400, 401, 402, 403, 404, 409, 413, 415, 422} <= set(statuses), statuses
    for fast, slow, request in zip(answers["fast"], answers["slow"], requests("a"), strict=True):
        where = f"{request[1]} {request[3][:60]!r}"
        assert fast[0] == slow[0], where
        assert fast[2] == slow[2], where
        assert fast[1].get("content-type") == slow[1].get("content-type"), where
        assert fast[1].get("content-type") == JSON or fast[0] == 307, where
        assert fast[1]["x-content-type-options"] == "nosniff", where
        if fast[0] == 401:
            assert fast[1]["www-authenticate"] == "Bearer"
