"""Request bodies: size-limited, strict JSON, decoded and validated in one step
by msgspec against the endpoint's body type (a `RequestBody` Struct whose fields
are the declared types of metering/fields.py); the OpenAPI document is generated
from the same types. Errors name the field: 422 `invalid_request` with `field`
(`account_id`, `rate_card.sms_outbound_micros`, `items[2].message_id`).

Order of checks: size (413), then `strict_json` on the raw bytes (415, 400
duplicate_key / trailing_data) - the one place raw bytes are checked before
decoding - then decoding (400 malformed_json; 422 for a field).

Strict JSON: a body two parsers could read differently is refused before it is
decoded (`strict_json`): a key given twice in one object (decoders keep the
last, a proxy or WAF may read the first), a content type other than JSON; data
after the JSON value is named when the decoder refuses it (`malformed`)."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request

from metering import fields

JSON_MEDIA_TYPE = "application/json"
# An object key: a string directly followed by a colon. In a body without a
# backslash no string can hold a quote, so when every colon of the body follows
# a quote this finds exactly the keys of every object.
KEY = re.compile(rb'"([^"]*)":')
# Past this size (a batch of debits) the regex pass costs as much as the exact
# parser and its keys repeat from object to object anyway: the exact check only.
REGEX_CHECK_BYTES_MAX = 2_048


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


class RequestBody(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every request body: an unknown field is refused, naming it."""


BodyT = TypeVar("BodyT", bound=msgspec.Struct)


def as_mapping(body: msgspec.Struct) -> dict[str, Any]:
    """The body's fields as a dict, without the optional ones it did not carry
    (for domain functions that take a mapping)."""
    return {
        name: value
        for name, value in msgspec.structs.asdict(body).items()
        if value is not msgspec.UNSET
    }


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode(raw: bytes, body_type: type[BodyT]) -> BodyT:
    """Decode and validate `raw` as `body_type` (after `strict_json`)."""
    decoder = _DECODERS.get(body_type)
    if decoder is None:
        decoder = _DECODERS[body_type] = msgspec.json.Decoder(body_type)
    try:
        body: BodyT = decoder.decode(raw)
        return body
    except msgspec.ValidationError as exc:
        said, path = fields.split_error(str(exc))
        if not path and said.startswith("Expected `object`"):
            raise MalformedBody("the request body must be a JSON object") from None
        raise fields.invalid(exc, body_type) from None
    except msgspec.DecodeError as exc:
        raise malformed(raw, str(exc)) from None


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
    if b"\\" not in raw and len(raw) <= REGEX_CHECK_BYTES_MAX:
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


async def read_raw(request: Request, bytes_max: int) -> bytes:
    """The body's bytes, refused past bytes_max without reading on."""
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
    return b"".join(chunks)


async def read_body(request: Request, body_type: type[BodyT], bytes_max: int) -> BodyT:
    """Read at most bytes_max bytes, check them as strict JSON, decode them as
    `body_type`."""
    raw = await read_raw(request, bytes_max)
    strict_json(request.headers.get("content-type"), raw)
    return decode(raw, body_type)
