"""The OpenAPI 3.1 document, generated from the endpoint table so it cannot
drift from the handlers: request bodies and answers are the msgspec Structs the
handlers decode and encode, described by msgspec's JSON Schema generator
(components referenced by name: RateCard, Error, each body and answer)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.answers import Error
from gateway.endpoints import ENDPOINTS, Endpoint

REF = "#/components/schemas/{name}"
ERROR_TEXT = {
    400: "malformed_json, duplicate_key (a key twice in one object) or trailing_data "
    "(data after the JSON object).",
    401: "Missing or invalid bearer token.",
    402: "insufficient_funds: the available balance does not cover the cost.",
    403: "The token's role or account may not do this.",
    404: "Unknown account or call.",
    409: "Idempotency conflict or a closed call.",
    413: "Body too large.",
    415: "unsupported_media_type: the body is not sent as Content-Type: application/json.",
    422: "A field is missing or invalid (the body names it).",
    429: "concurrent_call_limit (the account's open calls), or too_many_auth_failures "
    "(this address or token prefix failed too often: Retry-After says when to try again).",
    503: "Redis unavailable or ledger backlog full.",
}


def _error_codes(e: Endpoint) -> list[int]:
    # Every JSON body may be refused as too large or not declared JSON; any bearer
    # token, after too many failed authentications (a token that is neither the
    # switch's nor ops' is looked up as a customer's, whatever the endpoint).
    codes = set(e.errors) | ({413, 415} if e.body is not None else set())
    if e.roles:
        codes.add(429)
    return sorted(codes)


def _operation(e: Endpoint, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": e.summary,
        "description": "Roles: " + (", ".join(e.roles) or "none (signature-verified)"),
        "operationId": e.handler.__name__,
        "security": [{"bearer": []}] if e.roles else [],
        "responses": {
            str(e.success): {
                "description": "Success",
                "content": {"application/json": {"schema": refs.get(e.answer, {"type": "object"})}},
            },
            **{
                str(code): {
                    "description": ERROR_TEXT.get(code, "Error"),
                    "content": {"application/json": {"schema": refs[Error]}},
                }
                for code in _error_codes(e)
            },
        },
    }
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in re.findall(r"{(\w+)}", e.path)
    ]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in e.query
    ]
    if parameters:
        op["parameters"] = parameters
    if e.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[e.body]}},
        }
    return op


def build_openapi(endpoints: list[Endpoint] | None = None) -> dict[str, Any]:
    table = endpoints if endpoints is not None else ENDPOINTS
    types = [Error] + sorted(
        {t for e in table for t in (e.body, e.answer) if t is not None}, key=lambda t: t.__name__
    )
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for e in table:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Prepaid metering gateway",
            "version": "1",
            "description": "The switch contract v1: money in integer micro-units, "
            "durations in integer seconds.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
