"""JSON rendering with orjson (integers stay integers, no floats appear)."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from starlette.responses import Response

_ENCODER = msgspec.json.Encoder()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **details}


def answer(content: msgspec.Struct, status_code: int = 200) -> Response:
    """A declared answer (gateway/answers.py), encoded by msgspec."""
    return Response(_ENCODER.encode(content), status_code, media_type="application/json")
