"""Typed bodies and answers: one msgspec declaration decodes and validates each
request body, shapes each answer and produces the OpenAPI document."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from devkit.testing import RATE_CARD
from gateway import answers, switch_api
from gateway.bodies import MalformedBody, decode
from gateway.endpoints import ENDPOINTS
from metering import fields
from metering.errors import InvalidRequest
from tests.conftest import OPS, SWITCH, make_account


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b'{"account_id":"a","message_id":"m"}', "direction", "direction is required"),
        (b'{"account_id":"a","message_id":"m","direction":"up"}', "direction", "one of"),
        (b'{"account_id":"a","message_id":5,"direction":"inbound"}', "message_id", "1-128"),
        (b'{"account_id":"a\\n","message_id":"m","direction":"inbound"}', "account_id", "1-64"),
        (b'{"account_id":"a","message_id":"m|x","direction":"inbound"}', "message_id", "1-128"),
        (b'{"account_id":"a","message_id":"m","direction":"inbound","x":1}', "x", "unknown"),
        (b'{"account_id":"a","message_id":"m","direction":"inbound","number":"12"}', "number", ""),
    ],
)
def test_a_body_error_names_its_field_in_words(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode(raw, switch_api.MessageRequest)
    assert caught.value.field == field
    assert words in caught.value.message and "`" not in caught.value.message


@pytest.mark.parametrize(
    ("duration", "words"),
    [
        (0, "at least 1"),
        (-5, "at least 1"),
        (12.5, "whole number"),
        ("60", "whole number"),
        (True, "whole number"),
        (2**64, "whole number"),
    ],
)
def test_integers_are_integers_within_bounds(duration: Any, words: str) -> None:
    raw = msgspec.json.encode({"account_id": "a", "duration_seconds": duration})
    with pytest.raises(InvalidRequest) as caught:
        decode(raw, switch_api.CommitRequest)
    assert caught.value.field == "duration_seconds" and words in caught.value.message


def test_nested_fields_are_named_by_their_path() -> None:
    from gateway.accounts_api import CreateAccountRequest

    def refused(body: dict[str, Any]) -> InvalidRequest:
        with pytest.raises(InvalidRequest) as caught:
            decode(msgspec.json.encode(body), CreateAccountRequest)
        return caught.value

    bad = refused({"account_id": "a", "rate_card": {**RATE_CARD, "sms_inbound_micros": -1}})
    assert bad.field == "rate_card.sms_inbound_micros" and "between 0 and" in bad.message
    missing = {k: v for k, v in RATE_CARD.items() if k != "call_increment_seconds"}
    bad = refused({"account_id": "a", "rate_card": missing})
    assert bad.field == "rate_card.call_increment_seconds" and "required" in bad.message
    bad = refused({"account_id": "a", "rate_card": {**RATE_CARD, "tip_micros": 1}})
    assert bad.field == "rate_card.tip_micros" and "sms_outbound_micros" in bad.message
    with pytest.raises(MalformedBody):
        decode(b"[1, 2]", CreateAccountRequest)


def test_the_domain_checks_with_the_same_declarations() -> None:
    for value in ("a b", "a\n", "", "x" * 65, 5, None):
        with pytest.raises(InvalidRequest):
            fields.account_id(value)
    assert fields.account_id("acct-1.x_2") == "acct-1.x_2"
    assert fields.rule(fields.RequestId) == "1-128 characters of letters, digits and _.:@+=/-"


async def test_openapi_describes_bodies_answers_errors_and_the_rate_card(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return schemas[ref.rsplit("/", 1)[1]] if ref else schema

    message = document["paths"]["/v1/messages"]["post"]
    body = resolve(message["requestBody"]["content"]["application/json"]["schema"])
    assert body["properties"]["direction"]["enum"] == ["inbound", "outbound"]
    assert body["properties"]["account_id"]["pattern"].startswith("^[A-Za-z0-9]")
    ok = resolve(message["responses"]["200"]["content"]["application/json"]["schema"])
    assert ok["properties"]["charged_micros"]["type"] == "integer"
    assert set(ok["required"]) == set(answers.MessageCharged.__struct_fields__)
    error = resolve(message["responses"]["402"]["content"]["application/json"]["schema"])
    assert {"error", "message", "field", "cost_micros"} <= set(error["properties"])
    assert error["required"] == ["error", "message"]

    create = document["paths"]["/v1/accounts"]["post"]
    body = resolve(create["requestBody"]["content"]["application/json"]["schema"])
    rate_card = resolve(body["properties"]["rate_card"])
    assert rate_card["additionalProperties"] is False
    assert rate_card["properties"]["call_increment_seconds"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 3600,
        "description": "Billing increment.",
    }
    commit = resolve(
        document["paths"]["/v1/calls/{call_id}/commit"]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"]
    )
    assert commit["properties"]["duration_seconds"]["minimum"] == 1
    # Every switch endpoint and the account endpoints have a described answer.
    for e in ENDPOINTS:
        if "switch" in e.roles and e.method == "POST" or e.path == "/v1/accounts":
            assert e.answer is not None, e.path


async def test_answers_are_exactly_their_declarations(http: httpx.AsyncClient) -> None:
    """What the handlers send is what the document declares, field for field."""
    account = await make_account(http, 10_000_000)

    def exactly(declared: type[msgspec.Struct], answer: dict[str, Any]) -> None:
        assert set(answer) == set(declared.__struct_fields__), declared.__name__
        msgspec.convert(answer, declared)  # types too

    post = {"headers": SWITCH}
    r = await http.post(
        "/v1/messages",
        json={"account_id": account, "message_id": "m1", "direction": "outbound"},
        **post,
    )
    exactly(answers.MessageCharged, r.json())
    r = await http.post(
        "/v1/ring-through-attempts", json={"account_id": account, "attempt_id": "t1"}, **post
    )
    exactly(answers.AttemptCharged, r.json())
    r = await http.post(
        "/v1/calls",
        json={"account_id": account, "call_id": "c1", "direction": "outbound"},
        **post,
    )
    exactly(answers.CallGrant, r.json())
    r = await http.post("/v1/calls/c1/extend", json={"account_id": account}, **post)
    exactly(answers.CallGrant, r.json())
    r = await http.post(
        "/v1/calls/c1/commit", json={"account_id": account, "duration_seconds": 30}, **post
    )
    exactly(answers.CallCharged, r.json())
    await http.post(
        "/v1/calls", json={"account_id": account, "call_id": "c2", "direction": "inbound"}, **post
    )
    r = await http.post("/v1/calls/c2/release", json={"account_id": account}, **post)
    exactly(answers.CallReleased, r.json())
    r = await http.post(
        f"/v1/accounts/{account}/credits",
        headers=OPS,
        json={"credit_id": "c9", "amount_micros": 5, "reason": "test"},
    )
    exactly(answers.FundsAdded, r.json())
    r = await http.get(f"/v1/accounts/{account}", headers=OPS)
    view = r.json()
    exactly(answers.AccountAnswer, view)
    exactly(answers.RechargeState, view["recharge"])
    exactly(answers.AlertState, view["alerts"])
    assert set(view["rate_card"]) == set(RATE_CARD)
    r = await http.post(f"/v1/accounts/{account}/tokens", headers=OPS, json={"label": "dash"})
    exactly(answers.TokenIssued, r.json())
    r = await http.post(
        "/v1/messages",
        json={"account_id": "no-such-acct", "message_id": "m1", "direction": "outbound"},
        **post,
    )
    assert r.status_code == 404
    msgspec.convert(r.json(), answers.Error)


def test_answers_declare_every_field_of_the_domain_results() -> None:
    """A field the domain adds to a result must be declared in its answer (the
    message path builds its answer field by field, for speed)."""
    from metering.credits import Credit
    from metering.debits import Charge
    from metering.reservations import CallCharge, Grant, Release

    charge = Charge("sms_outbound", 1, 2, 0, 3, False).as_dict()
    for declared, extra in (
        (answers.MessageCharged, {"message_id"}),
        (answers.AttemptCharged, {"attempt_id"}),
        (answers.PurchaseCharged, {"purchase_id", "number"}),
        (answers.RenewalCharged, {"renewal_id", "number"}),
    ):
        assert set(declared.__struct_fields__) == set(charge) | extra, declared.__name__
    grant = Grant("c", 1, 2, 3, False, 4, 5, 6, 7, False).as_dict()
    assert set(answers.CallGrant.__struct_fields__) == set(grant)
    call = CallCharge("c", 1, 1, 1, 1, 0, 1, False, False).as_dict()
    assert set(answers.CallCharged.__struct_fields__) == set(call)
    released = Release("c", 1, 1, 0, False).as_dict()
    assert set(answers.CallReleased.__struct_fields__) == set(released)
    credit = Credit(1, 1, 0, 1, False).as_dict()
    assert set(answers.FundsAdded.__struct_fields__) == set(credit) | {"credit_id"}
