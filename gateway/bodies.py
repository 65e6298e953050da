"""Request bodies: size-limited, JSON objects only, fields checked against the
endpoint's declared body (the same declaration the OpenAPI document shows).

Strict JSON: a body two parsers could read differently is refused before it is
decoded (`strict_json`): a key given twice in one object (decoders keep the
last, a proxy or WAF may read the first), a content type other than JSON; data
after the JSON value is named when the decoder refuses it (`malformed`)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import orjson
from starlette.requests import Request

JSON_MEDIA_TYPE = "application/json"
# An object key: a string directly followed by a colon. In a body without a
# backslash no string can hold a quote, so when every colon of the body follows
# a quote this finds exactly the keys of every object.
KEY = re.compile(rb'"([^"]*)":')


class MalformedBody(Exception):
    code = "malformed_json"


class DuplicateKey(MalformedBody):
    code = "duplicate_key"

    def __init__(self, field: str) -> None:
        super().__init__(f"the key {field!r} appears more than once in one JSON object")
        self.field = field


class TrailingData(MalformedBody):
    code = "trailing_data"


class UnsupportedMediaType(Exception):
    code = "unsupported_media_type"


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


def _check_content_type(content_type: str | None) -> None:
    if content_type == JSON_MEDIA_TYPE:
        return
    media_type, _, params = (content_type or "").partition(";")
    charset = params.strip().lower().replace(" ", "")
    if media_type.strip().lower() == JSON_MEDIA_TYPE and charset in ("", "charset=utf-8"):
        return
    raise UnsupportedMediaType(
        f"the request body must be sent as Content-Type: {JSON_MEDIA_TYPE} "
        f"(UTF-8), not {content_type or 'without a content type'}"
    )


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


def strict_json(content_type: str | None, raw: bytes) -> None:
    """Refuse a body two JSON parsers could read differently; call before decoding.

    Cost on a switch body: one regex pass (about 1 us, measured by
    tests/test_strict_input.py). The exact check (the standard library's
    parser, which hands over every key of every object) runs only when a key's
    bytes appear twice, a colon stands elsewhere than right after a key
    (whitespace, or inside a value), or an escape could spell one key two ways."""
    _check_content_type(content_type)
    if b"\\" not in raw:
        keys = KEY.findall(raw)
        if raw.count(b":") == len(keys) and len(set(keys)) == len(keys):
            return
    try:
        json.loads(raw, object_pairs_hook=_refuse_repeated_keys)
    except (ValueError, RecursionError):
        pass  # not JSON: the decoder refuses it and says why


def malformed(raw: bytes, decoder_message: str) -> MalformedBody:
    """The error for a body the decoder refused, naming data after the JSON
    value (decoders word it differently); called only on the error path."""
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip())
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        end = len(text)
    if text[end:].strip():
        return TrailingData(
            f"the request body holds data after the JSON value (from character {end}): "
            "send exactly one JSON object"
        )
    return MalformedBody(f"the request body is not valid JSON: {decoder_message}")


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
    raw = b"".join(chunks)
    strict_json(request.headers.get("content-type"), raw)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise malformed(raw, exc.msg) from None
    return body.check(data)
