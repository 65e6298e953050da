"""Request bodies: size-limited, JSON objects only, fields checked against the
endpoint's declared body (the same declaration the OpenAPI document shows)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from starlette.requests import Request


class MalformedBody(Exception):
    code = "malformed_json"


class BodyTooLarge(Exception):
    code = "body_too_large"


class MissingField(Exception):
    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    kind: str  # JSON schema type: string, integer, boolean, object
    required: bool
    description: str
    enum: tuple[str, ...] = ()
    minimum: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Body:
    fields: dict[str, Field]

    def check(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise MalformedBody("the request body must be a JSON object")
        for name in data:
            if name not in self.fields:
                expected = ", ".join(self.fields)
                raise MissingField(name, f"unknown field {name!r}; expected: {expected}")
        for name, field in self.fields.items():
            if field.required and name not in data:
                raise MissingField(name, f"{name} is required")
        return data


async def read_json(request: Request, body: Body, bytes_max: int) -> dict[str, Any]:
    """Read at most bytes_max bytes and parse them as the declared body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > bytes_max:
        raise BodyTooLarge(f"the request body is larger than {bytes_max} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bytes_max:
            raise BodyTooLarge(f"the request body is larger than {bytes_max} bytes")
        chunks.append(chunk)
    try:
        data = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc.msg}") from None
    return body.check(data)
