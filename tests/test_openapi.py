"""The OpenAPI document served at /openapi.json is the one the router uses."""

from __future__ import annotations

import re

import httpx
from starlette.routing import Route

from gateway.app import create_app
from gateway.endpoints import ENDPOINTS
from gateway.openapi import build_openapi
from tests.conftest import OPS, SWITCH, make_account, test_settings


async def test_openapi_lists_exactly_the_routes_served(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    app = create_app(test_settings())
    served = {
        (m, re.sub(r":\w+}", "}", r.path))
        for r in app.routes
        if isinstance(r, Route)
        for m in r.methods or ()
        if m != "HEAD" and r.path.startswith("/v1/")
    }
    assert documented == served
    for e in ENDPOINTS:
        op = document["paths"][e.path][e.method.lower()]
        assert str(e.success) in op["responses"]
        if e.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert set(schema["properties"]) == set(e.body.__struct_fields__)
            assert schema["additionalProperties"] is False


async def test_every_declared_body_is_enforced_by_its_handler(http: httpx.AsyncClient) -> None:
    """A field the document does not declare is refused by the handler, naming it."""
    # Endpoints only a customer may call get the token of an account of their own.
    account_id = await make_account(http)
    r = await http.post(f"/v1/accounts/{account_id}/tokens", headers=OPS, json={"label": "t"})
    customer = {"Authorization": f"Bearer {r.json()['token']}"}
    for e in ENDPOINTS:
        if e.body is None:
            continue
        path = e.path.replace("{account_id}", account_id).replace("{call_id}", "call-x")
        headers = SWITCH if "switch" in e.roles else OPS if "ops" in e.roles else customer
        r = await http.request(e.method, path, headers=headers, json={"undeclared_field": 1})
        assert r.status_code == 422, (e.path, r.text)
        assert r.json()["field"] == "undeclared_field"


async def test_activity_query_parameters_are_documented(http: httpx.AsyncClient) -> None:
    from metering.ledger.activity import QUERY_PARAMS

    document = (await http.get("/openapi.json")).json()
    op = document["paths"]["/v1/accounts/{account_id}/activity"]["get"]
    documented = {p["name"] for p in op["parameters"] if p["in"] == "query"}
    assert documented == set(QUERY_PARAMS)


async def test_every_endpoint_taking_a_token_documents_the_auth_failure_limit() -> None:
    """A token that is neither the switch's nor ops' is looked up as a customer's, on
    any endpoint, so after too many failures any of them answers 429: the document
    says so for each (the simulation's fuzzer found it undocumented on ops-only ones)."""
    document = build_openapi()
    for e in ENDPOINTS:
        responses = document["paths"][e.path][e.method.lower()]["responses"]
        if e.roles:
            assert "429" in responses, (e.method, e.path)
