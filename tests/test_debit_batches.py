"""POST /v1/debit-batches: texts and ring-through attempts in one request, each
charged or refused on its own with its own id and idempotency, answered (and
applied) in order; a bad item or too many items refuse the whole batch and
change nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx

from devkit.testing import RATE_CARD
from metering.store import Store
from tests.conftest import OPS, SWITCH, make_account
from tests.ledger_stream import account_dump

SMS = RATE_CARD["sms_outbound_micros"]
ATTEMPT = RATE_CARD["ring_through_attempt_micros"]


def message(account: str, message_id: str, direction: str = "outbound") -> dict[str, Any]:
    return {
        "type": "message",
        "account_id": account,
        "message_id": message_id,
        "direction": direction,
    }


def alone(item: dict[str, Any]) -> dict[str, Any]:
    """The item as the single endpoint's body (no "type")."""
    return {k: v for k, v in item.items() if k != "type"}


def attempt(account: str, attempt_id: str) -> dict[str, Any]:
    return {"type": "attempt", "account_id": account, "attempt_id": attempt_id}


async def test_each_item_is_answered_in_order_as_its_own_endpoint_would(
    http: httpx.AsyncClient,
) -> None:
    rich = await make_account(http, 1_000_000)
    poor = await make_account(http, SMS + ATTEMPT)  # one text and one attempt
    single = await http.post(
        "/v1/messages", headers=SWITCH, json=alone(message(rich, "sent-before"))
    )
    assert single.status_code == 200
    items = [
        message(rich, "b1"),
        attempt(rich, "t1"),
        message(rich, "sent-before"),  # a repeat: the first answer again
        message(rich, "sent-before", "inbound"),  # same id, other body: conflict
        message("no-such-account", "x1"),
        message(poor, "p1"),
        message(poor, "p2"),  # nothing left for a second text
        attempt(poor, "p3"),
        message(rich, "b2", "inbound"),
    ]
    r = await http.post("/v1/debit-batches", headers=SWITCH, json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["type"] for x in results] == [i["type"] for i in items]
    assert [x["status"] for x in results] == [200, 200, 200, 409, 404, 200, 402, 200, 200]
    # Applied in order: the rich account's seqs follow the items.
    assert [results[i]["answer"]["seq"] for i in (0, 1, 8)] == [3, 4, 5]
    assert results[0]["answer"]["message_id"] == "b1"
    assert results[1]["answer"]["attempt_id"] == "t1"
    assert results[2]["answer"] == single.json()  # the replay is the first answer
    assert results[3]["error"]["error"] == "idempotency_conflict"
    assert results[4]["error"]["error"] == "unknown_account"
    refused = results[6]["error"]
    assert refused["error"] == "insufficient_funds" and refused["cost_micros"] == SMS
    assert results[7]["answer"]["available_micros"] == 0
    assert all(("answer" in x) != ("error" in x) for x in results)
    # Each item kept its own idempotency: a single request with its id replays it.
    again = await http.post("/v1/messages", headers=SWITCH, json=alone(message(rich, "b1")))
    assert again.json() == results[0]["answer"]
    # An item's error has the single endpoint's body (the balance has moved since).
    single = await http.post("/v1/messages", headers=SWITCH, json=alone(message(poor, "p2")))
    assert single.status_code == 402 and set(single.json()) == set(refused)
    assert single.json()["cost_micros"] == refused["cost_micros"]
    view = (await http.get(f"/v1/accounts/{rich}", headers=OPS)).json()
    assert view["balance_micros"] == 1_000_000 - 2 * SMS - ATTEMPT - RATE_CARD["sms_inbound_micros"]


async def test_a_bad_item_or_too_many_refuse_the_batch_and_change_nothing(
    http: httpx.AsyncClient, store: Store
) -> None:
    account = await make_account(http, 1_000_000)
    before = await account_dump(store, account)
    bad = [message(account, "ok-1"), attempt(account, "bad|id"), message(account, "ok-2")]
    r = await http.post("/v1/debit-batches", headers=SWITCH, json={"items": bad})
    assert r.status_code == 422 and r.json()["field"] == "items[1].attempt_id", r.text
    r = await http.post(
        "/v1/debit-batches", headers=SWITCH, json={"items": [{**attempt(account, "t"), "x": 1}]}
    )
    assert r.status_code == 422 and r.json()["field"] == "items[0].x", r.text
    r = await http.post(
        "/v1/debit-batches", headers=SWITCH, json={"items": [{"type": "sms", "account_id": "a"}]}
    )
    assert r.status_code == 422 and "message, attempt" in r.json()["message"], r.text
    # A key twice in one item, in a body past the regex pre-check's size: the
    # exact check still refuses it (400 duplicate_key), whatever the other items.
    items = [attempt(account, f"d{i}") for i in range(40)]
    raw = b'{"items":[' + b",".join(json.dumps(i).encode() for i in items)
    raw += b',{"type":"attempt","account_id":"%s","attempt_id":"x","attempt_id":"y"}]}' % (
        account.encode()
    )
    assert len(raw) > 2_048
    r = await http.post(
        "/v1/debit-batches",
        headers={**SWITCH, "content-type": "application/json"},
        content=raw,
    )
    assert r.status_code == 400 and r.json()["error"] == "duplicate_key", r.text
    limit = store.settings.debit_batch_items_max
    many = [attempt(account, f"t{i}") for i in range(limit + 1)]
    r = await http.post("/v1/debit-batches", headers=SWITCH, json={"items": many})
    assert r.status_code == 422 and r.json()["field"] == "items", r.text
    r = await http.post("/v1/debit-batches", headers=SWITCH, json={"items": []})
    assert r.status_code == 422 and r.json()["field"] == "items", r.text
    r = await http.post("/v1/debit-batches", headers=OPS, json={"items": bad[:1]})
    assert r.status_code == 403
    assert await account_dump(store, account) == before
    r = await http.post("/v1/debit-batches", headers=SWITCH, json={"items": many[:limit]})
    assert r.status_code == 200 and len(r.json()["results"]) == limit
