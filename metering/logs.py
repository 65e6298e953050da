"""Logs of every process: one JSON object per line on stderr (or plain text),
secrets masked, third-party libraries quiet.

    {"ts": "2026-11-29T12:00:00.123Z", "level": "warning", "logger": "metering.ledger.writer",
     "message": "...", "request_id": "...", <fields given as extra=...>}

- `METERING_LOG_FORMAT`: `json` (default) or `text`.
- `METERING_LOG_LEVEL` for the gateway (the command line's --log-level for the
  `python -m metering` commands); libraries (httpx, Stripe, asyncpg, asyncio,
  websockets, ...) log at `METERING_LOG_LIBRARIES_LEVEL` (warning), so the
  lines that matter do not scroll away among HTTP client chatter.
- The request id of the request being served (gateway/observe.py) is added
  to every line logged while serving it.
- Secrets never reach a log line: the formatter masks bearer tokens, `token=`
  query values, passwords in URLs and the configured secrets themselves
  (switch and ops tokens, Stripe keys), whatever logged them.

Why the standard library and not structlog: every library here logs through
`logging` already, and one formatter covers them all; a JSON line costs about
10 µs (measured in tests/test_logs.py), and nothing on the authorize path logs.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from metering.settings import Settings

# The request being served (set by the gateway for the duration of a request).
request_id_var: contextvars.ContextVar[bytes | str | None] = contextvars.ContextVar(
    "metering_request_id", default=None
)

# Loggers of libraries, held at METERING_LOG_LIBRARIES_LEVEL.
LIBRARY_LOGGERS = (
    "asyncio",
    "asyncpg",
    "httpx",
    "httpcore",
    "stripe",
    "websockets",
    "aiosmtplib",
    "mail.log",
    "multipart",
    "urllib3",
    "hpack",
    "uvicorn.access",
)
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("json", "text")
MASK = "<redacted>"
# Bearer tokens, token= query values, and URL passwords (scheme://user:password@).
SECRET_PATTERNS = re.compile(
    r"(?P<k>(?:[?&\s\"']|^)token=)[^&\s\"']+"
    r"|(?P<b>Bearer\s+)[^\s\"',]+"
    r"|(?P<u>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)",
    re.IGNORECASE,
)
# Secrets shorter than this are not masked by value (they would mask ordinary words).
SECRET_LENGTH_MIN = 8
_STANDARD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class Redactor:
    """Masks secrets in text: the patterns above and any configured secret value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if len(s) >= SECRET_LENGTH_MIN}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        text = SECRET_PATTERNS.sub(_keep_prefix, text)
        if self._values is not None:
            text = self._values.sub(MASK, text)
        return text


def _keep_prefix(match: re.Match[str]) -> str:
    return (match.group("k") or match.group("b") or match.group("u")) + MASK


def secrets_of(settings: Settings) -> list[str]:
    """The configured values that must never appear in a log line."""
    return [
        settings.switch_token,
        settings.ops_token,
        settings.stripe_api_key,
        settings.stripe_webhook_secret,
        settings.receipt_link_key,
    ]


def _text(request_id: bytes | str) -> str:
    # The gateway keeps the id as its header's bytes (ASCII: gateway/observe.py).
    return request_id.decode("ascii") if isinstance(request_id, bytes) else request_id


def _utc(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra= fields become keys."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            out["request_id"] = _text(request_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_FIELDS and key not in out:
                out[key] = self.redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = self.redact(record.exc_text)
        if record.stack_info:
            out["stack"] = self.redact(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`<time> <level> <logger>: <message> [request_id=...]`, secrets masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = request_id_var.get()
        if request_id is not None:
            text += f" request_id={_text(request_id)}"
        return self.redact(text)


def check_level(level: str, what: str = "log level") -> str:
    if level.lower() not in LEVELS:
        raise ValueError(f"{what} {level!r} is not one of {', '.join(LEVELS)}")
    return level.lower()


def configure_logging(level: str, settings: Settings | None = None) -> None:
    """Send every logger's records to stderr through one formatter (call once per
    process, before logging anything; again in a uvicorn worker process)."""
    level = check_level(level)
    log_format = settings.log_format if settings else "text"
    libraries = settings.log_libraries_level if settings else "warning"
    redact = Redactor(secrets_of(settings) if settings else ())
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(redact)
    else:
        formatter = TextFormatter(redact)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    library_level = check_level(libraries, "METERING_LOG_LIBRARIES_LEVEL").upper()
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    # uvicorn's own loggers (when it did not configure them) go to the root's handler.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level.upper())
