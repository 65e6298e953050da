"""The OpenAPI 3.1 document, generated from the endpoint table so it cannot
drift from the handlers' declared bodies."""

from __future__ import annotations

import re
from typing import Any

from gateway.endpoints import ENDPOINTS, Endpoint

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Machine-readable code."},
        "message": {"type": "string", "description": "What is wrong, in a sentence."},
    },
}
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
    429: "The account's concurrent call limit.",
    503: "Redis unavailable or ledger backlog full.",
}


def _error_codes(e: Endpoint) -> list[int]:
    # Every JSON body may be refused as too large or not declared JSON.
    return sorted(set(e.errors) | ({413, 415} if e.body is not None else set()))


def _operation(e: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": e.summary,
        "description": "Roles: " + (", ".join(e.roles) or "none (signature-verified)"),
        "operationId": e.handler.__name__,
        "security": [{"bearer": []}] if e.roles else [],
        "responses": {
            str(e.success): {
                "description": "Success",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **{
                str(code): {
                    "description": ERROR_TEXT.get(code, "Error"),
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
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
        props: dict[str, Any] = {}
        for name, f in e.body.fields.items():
            prop: dict[str, Any] = {"type": f.kind, "description": f.description}
            if f.enum:
                prop["enum"] = list(f.enum)
            if f.minimum is not None:
                prop["minimum"] = f.minimum
            props[name] = prop
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [n for n, f in e.body.fields.items() if f.required],
                        "properties": props,
                    }
                }
            },
        }
    return op


def build_openapi(endpoints: list[Endpoint] | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints if endpoints is not None else ENDPOINTS:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e)
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
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
