"""Invariant 7: bad input gets a clear 4xx with the documented body and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devkit.testing import RATE_CARD
from metering.keys import AccountKeys
from metering.store import Store
from tests.conftest import OPS, SWITCH, make_account
from tests.ledger_stream import account_dump

GOOD_MESSAGE = {"message_id": "m-ok", "direction": "outbound"}


def _cases(
    account: str, other: str, other_token: str
) -> list[tuple[str, str, dict[str, str], Any, int, str]]:
    """(method, path, headers, body, status, error code)"""
    a = {"account_id": account}
    return [
        ("POST", "/v1/messages", SWITCH, b'{"account_id": ', 400, "malformed_json"),
        ("POST", "/v1/messages", SWITCH, b"[1, 2]", 400, "malformed_json"),
        ("POST", "/v1/messages", SWITCH, b"", 400, "malformed_json"),
        ("POST", "/v1/messages", SWITCH, {**a, "direction": "outbound"}, 422, "invalid_request"),
        ("POST", "/v1/messages", SWITCH, {**a, **GOOD_MESSAGE, "extra": 1}, 422, "invalid_request"),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {**a, "message_id": 5, "direction": "outbound"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {**a, "message_id": "a|b", "direction": "outbound"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {**a, "message_id": "x", "direction": "sideways"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {"account_id": "no-such-account", **GOOD_MESSAGE},
            404,
            "unknown_account",
        ),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {"account_id": "bad id!", **GOOD_MESSAGE},
            422,
            "invalid_request",
        ),
        ("POST", "/v1/messages", {}, {**a, **GOOD_MESSAGE}, 401, "unauthorized"),
        (
            "POST",
            "/v1/messages",
            {"Authorization": "Bearer wrong"},
            {**a, **GOOD_MESSAGE},
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/messages",
            {"Authorization": "Basic dGVzdA=="},
            {**a, **GOOD_MESSAGE},
            401,
            "unauthorized",
        ),
        ("POST", "/v1/messages", OPS, {**a, **GOOD_MESSAGE}, 403, "forbidden"),
        (
            "POST",
            "/v1/messages",
            {"Authorization": f"Bearer {other_token}"},
            {**a, **GOOD_MESSAGE},
            403,
            "forbidden",
        ),
        (
            "GET",
            f"/v1/accounts/{account}",
            {"Authorization": f"Bearer {other_token}"},
            None,
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/messages",
            SWITCH,
            {**a, "message_id": "big", "direction": "x" * 20_000},
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/numbers/purchases",
            SWITCH,
            {**a, "purchase_id": "p", "number": "abc"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls",
            SWITCH,
            {**a, "call_id": "c", "direction": True},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls/open-call/commit",
            SWITCH,
            {**a, "duration_seconds": -5},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls/open-call/commit",
            SWITCH,
            {**a, "duration_seconds": 0},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls/open-call/commit",
            SWITCH,
            {**a, "duration_seconds": 10**12},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls/open-call/commit",
            SWITCH,
            {**a, "duration_seconds": 12.5},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls/open-call/commit",
            SWITCH,
            {**a, "duration_seconds": "60"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/calls/no-such-call/commit",
            SWITCH,
            {**a, "duration_seconds": 60},
            404,
            "unknown_call",
        ),
        ("POST", "/v1/calls/no-such-call/extend", SWITCH, a, 404, "unknown_call"),
        ("POST", "/v1/calls/no-such-call/release", SWITCH, a, 404, "unknown_call"),
        (
            "POST",
            "/v1/calls/open-call/commit",
            SWITCH,
            {"account_id": other, "duration_seconds": 60},
            404,
            "unknown_call",
        ),
        (
            "POST",
            f"/v1/accounts/{account}/credits",
            OPS,
            {"credit_id": "c", "amount_micros": 0, "reason": "r"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            f"/v1/accounts/{account}/credits",
            OPS,
            {"credit_id": "c", "amount_micros": -100, "reason": "r"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            f"/v1/accounts/{account}/credits",
            OPS,
            {"credit_id": "c", "amount_micros": 1.5, "reason": "r"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            f"/v1/accounts/{account}/credits",
            OPS,
            {"credit_id": "c", "amount_micros": 10**20, "reason": "r"},
            422,
            "invalid_request",
        ),
        (
            "POST",
            f"/v1/accounts/{account}/credits",
            SWITCH,
            {"credit_id": "c", "amount_micros": 100, "reason": "r"},
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/accounts",
            OPS,
            {"account_id": account, "rate_card": {**RATE_CARD, "call_increment_seconds": 0}},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/accounts",
            OPS,
            {"account_id": "new-acct", "rate_card": {**RATE_CARD, "sms_outbound_micros": -1}},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/accounts",
            OPS,
            {"account_id": "new-acct", "rate_card": {"x": 1}},
            422,
            "invalid_request",
        ),
        ("GET", "/v1/no-such-path", SWITCH, None, 404, "not_found"),
        ("DELETE", "/v1/messages", SWITCH, None, 405, "method_not_allowed"),
    ]


async def test_bad_input_is_refused_and_changes_nothing(
    http: httpx.AsyncClient, store: Store
) -> None:
    account = await make_account(http, 1_000_000)
    other = await make_account(http, 1_000_000)
    r = await http.post(f"/v1/accounts/{other}/tokens", headers=OPS, json={"label": "dash"})
    other_token = r.json()["token"]
    r = await http.post(
        "/v1/calls",
        headers=SWITCH,
        json={"account_id": account, "call_id": "open-call", "direction": "outbound"},
    )
    assert r.status_code == 200

    before = await account_dump(store, account)
    before_other = await account_dump(store, other)
    for method, path, headers, body, status, code in _cases(account, other, other_token):
        kwargs: dict[str, Any] = {"headers": {**headers, "content-type": "application/json"}}
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = body
        r = await http.request(method, path, **kwargs)
        where = f"{method} {path} {body!r:.80}"
        assert r.status_code == status, f"{where}: {r.status_code} {r.text}"
        answer = r.json()
        assert answer["error"] == code, where
        assert isinstance(answer["message"], str) and len(answer["message"]) > 10, where
        assert "balance_micros" not in answer, where
    assert await account_dump(store, account) == before
    assert await account_dump(store, other) == before_other
    assert not await store.redis.exists(AccountKeys("new-acct", store.settings.shard_count).account)


@pytest.mark.parametrize("field", ["message_id", "direction", "account_id"])
async def test_error_body_names_the_missing_field(http: httpx.AsyncClient, field: str) -> None:
    body = {"account_id": "acct-x", "message_id": "m", "direction": "outbound"}
    del body[field]
    r = await http.post("/v1/messages", headers=SWITCH, json=body)
    assert r.status_code == 422
    assert r.json()["field"] == field and field in r.json()["message"]
