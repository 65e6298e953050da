"""Keep bearer tokens out of logs. Browsers pass websocket tokens as `?token=`,
and uvicorn logs the websocket path with its query string at info level."""

from __future__ import annotations

import logging
import re

TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+|(Bearer\s+)\S+", re.IGNORECASE)


def _redact(text: str) -> str:
    return TOKEN_IN_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install() -> None:
    """Attach the filter to uvicorn's loggers (call after uvicorn configured logging)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
