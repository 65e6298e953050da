"""Strict JSON: a body that two parsers could read differently is refused with a
400/415 naming the problem, and charges nothing (a proxy or WAF that reads the
first of two `account_id`s must never see another account than the one charged)."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway import bodies
from metering.store import Store
from tests.conftest import OPS, SWITCH, make_account
from tests.ledger_stream import account_dump

JSON = {"content-type": "application/json"}


def message_body(account_id: str, message_id: str, *extra: str) -> bytes:
    fields = [
        f'"account_id": "{account_id}"',
        f'"message_id": "{message_id}"',
        '"direction": "outbound"',
        *extra,
    ]
    return ("{" + ", ".join(fields) + "}").encode()


async def test_a_repeated_key_is_refused_and_charges_neither_account(
    http: httpx.AsyncClient, store: Store
) -> None:
    first = await make_account(http, 1_000_000)
    second = await make_account(http, 1_000_000)
    before = (await account_dump(store, first), await account_dump(store, second))
    cases = [
        message_body(first, "dup-1", f'"account_id": "{second}"'),
        # The same key spelt with a JSON escape: every decoder reads "account_id".
        message_body(first, "dup-2", f'"account\\u005fid": "{second}"'),
        # Whitespace between the key and its colon.
        message_body(first, "dup-3", f'"account_id"  \n : "{second}"'),
    ]
    for raw in cases:
        r = await http.post("/v1/messages", headers={**SWITCH, **JSON}, content=raw)
        assert r.status_code == 400, (raw, r.text)
        answer = r.json()
        assert answer["error"] == "duplicate_key", answer
        assert answer["field"] == "account_id"
        assert "account_id" in answer["message"] and "more than once" in answer["message"]
    assert (await account_dump(store, first), await account_dump(store, second)) == before


async def test_a_repeated_key_inside_a_nested_object_is_refused(http: httpx.AsyncClient) -> None:
    raw = (
        b'{"account_id": "dup-nested", "rate_card": {"sms_outbound_micros": 1, '
        b'"sms_outbound_micros": 2}}'
    )
    r = await http.post("/v1/accounts", headers={**OPS, **JSON}, content=raw)
    assert r.status_code == 400 and r.json()["error"] == "duplicate_key", r.text
    assert r.json()["field"] == "sms_outbound_micros"
    r = await http.get("/v1/accounts/dup-nested", headers=OPS)
    assert r.status_code == 404


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_a_body_that_is_not_declared_json_is_refused_with_415(
    http: httpx.AsyncClient, store: Store, content_type: str | None
) -> None:
    account = await make_account(http, 1_000_000)
    before = await account_dump(store, account)
    request = http.build_request(
        "POST", "/v1/messages", headers=SWITCH, content=message_body(account, "ct-1")
    )
    if content_type is None:
        request.headers.pop("content-type", None)
    else:
        request.headers["content-type"] = content_type
    assert request.headers.get("content-type") == content_type
    r = await http.send(request)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type"
    assert "application/json" in r.json()["message"]
    assert await account_dump(store, account) == before


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON", "application/json; charset=utf-8"]
)
async def test_declared_json_is_accepted(http: httpx.AsyncClient, content_type: str) -> None:
    account = await make_account(http, 1_000_000)
    r = await http.post(
        "/v1/messages",
        headers={**SWITCH, "content-type": content_type},
        content=message_body(account, "ok-1"),
    )
    assert r.status_code == 200, r.text


async def test_data_after_the_json_object_is_refused_by_name(
    http: httpx.AsyncClient, store: Store
) -> None:
    account = await make_account(http, 1_000_000)
    before = await account_dump(store, account)
    for tail in (b' {"account_id": "x"}', b"x", b"\n}"):
        raw = message_body(account, "trail-1") + tail
        r = await http.post("/v1/messages", headers={**SWITCH, **JSON}, content=raw)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "trailing_data", r.text
        assert "after the JSON" in r.json()["message"]
    assert await account_dump(store, account) == before
    # Whitespace after the object is JSON, not trailing data.
    raw = message_body(account, "trail-ok") + b" \r\n\t"
    r = await http.post("/v1/messages", headers={**SWITCH, **JSON}, content=raw)
    assert r.status_code == 200, r.text


def test_the_strict_check_accepts_what_is_unambiguous() -> None:
    ok = [
        b'{"a": 1, "b": {"a": 2}}',  # the same name in two objects
        b'{"a": [{"k": 1}, {"k": 2}]}',
        b'{"a": "say \\"hi\\": ok", "b": "\\"a\\":"}',  # quotes and colons inside strings
        b'{"a": "x", "a\\u0062": 1}',  # an escape that spells another name
        b"not json at all",  # left to the decoder, which names its own problem
    ]
    for raw in ok:
        bodies.strict_json("application/json", raw)
    refused = [
        (b'{"a": 1, "a": 2}', "a"),
        (b'{"b": {"c": 1, "c": 1}}', "c"),
        (b'{"a": "\\"", "a": 2}', "a"),
        (b'{"\\u0061": 1, "a": 2}', "a"),
    ]
    for raw, key in refused:
        with pytest.raises(bodies.DuplicateKey) as caught:
            bodies.strict_json("application/json", raw)
        assert caught.value.field == key


def test_the_strict_check_costs_microseconds_on_a_switch_body() -> None:
    """The pre-check runs on every switch request: a regex over the body, and
    the exact (slow) check only when a key repeats or the body holds an escape."""
    raw = message_body("acct-0123456789ab", "msg-0123456789abcdef")
    rounds = 20_000
    start = time.perf_counter()
    for _ in range(rounds):
        bodies.strict_json("application/json", raw)
    per_call_us = (time.perf_counter() - start) / rounds * 1e6
    print(f"strict_json on a {len(raw)}-byte switch body: {per_call_us:.2f} us per call")
    # A debit costs about 200 us of gateway CPU (README, benchmarks); the check
    # measured about 1 us. The bound leaves room for a loaded CI machine.
    assert per_call_us < 20
