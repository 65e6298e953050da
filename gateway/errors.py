"""The one table from error types to HTTP answers. Every error body is
{"error": <code>, "message": <sentence>, ...details}."""

from __future__ import annotations

import logging
from typing import Any

from asyncpg.exceptions import UndefinedColumnError, UndefinedTableError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.auth import Forbidden, TooManyAuthFailures, Unauthorized
from gateway.bodies import (
    BodyTooLarge,
    DuplicateKey,
    MalformedBody,
    UnsupportedMediaType,
)
from gateway.responses import JSONResponse, error_body
from metering import errors
from metering.ledger.database import DATABASE_DOWN
from metering.ledger.migrate import MIGRATE_COMMAND
from metering.notify.webhooks import UnknownWebhook

log = logging.getLogger(__name__)

STATUS: dict[type[Exception], int] = {
    MalformedBody: 400,
    Unauthorized: 401,
    errors.InsufficientFunds: 402,
    Forbidden: 403,
    errors.UnknownAccount: 404,
    errors.UnknownToken: 404,
    errors.UnknownCall: 404,
    errors.UnknownReceipt: 404,
    errors.UnknownNumber: 404,
    errors.NumberSuspended: 402,
    UnknownWebhook: 404,
    errors.AccountExists: 409,
    errors.IdempotencyConflict: 409,
    errors.CallClosed: 409,
    errors.CallExtendLimit: 409,
    errors.CallDurationLimit: 409,
    BodyTooLarge: 413,
    UnsupportedMediaType: 415,
    errors.InvalidRequest: 422,
    errors.BalanceLimit: 422,
    errors.ConcurrentCallLimit: 429,
    TooManyAuthFailures: 429,
    # payments
    errors.CardDeclined: 402,
    errors.AuthenticationRequired: 402,
    errors.PaymentFailed: 402,
    errors.NoCardOnFile: 409,
    errors.ChargeMismatch: 409,
    errors.WebhookRejected: 400,
    errors.LedgerBacklogFull: 503,
    errors.Unavailable: 503,
}

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
Headers = dict[str, str] | None


def status_of(exc: Exception) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, dict[str, Any], Headers]:
    """(status, body, extra headers) of an error: the one mapping, used by
    Starlette's handlers below and by the switch's fast path (gateway/fast_path.py)."""
    status = status_of(exc)
    if status != 500:
        details: dict[str, Any] = {}
        if isinstance(exc, errors.MeteringError):
            details = dict(exc.details)
        elif isinstance(exc, DuplicateKey):
            details = {"field": exc.field}
        code = getattr(exc, "code", "error")
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooManyAuthFailures):
            headers = {"Retry-After": str(exc.retry_after_s)}
            details = {"retry_after_s": exc.retry_after_s}
        return status, error_body(code, str(exc), **details), headers
    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return exc.status_code, error_body(code, f"{method} {path}: {exc.detail}"), None
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        log.warning("redis unavailable: %s", exc)
        return 503, error_body("unavailable", "the balance store did not answer; retry"), None
    if isinstance(exc, DATABASE_DOWN):
        log.warning("database unavailable: %r", exc)
        return 503, error_body("unavailable", "the database did not answer; retry"), None
    if isinstance(exc, UndefinedTableError | UndefinedColumnError):
        # Postgres answered but lacks a table or column of this version: a 503 that
        # says what to do, not a 500 (the gateway refuses to start on such a
        # database when it can see it at start, see metering/ledger/migrate.py).
        error = errors.DatabaseNotMigrated(
            f"the Postgres database is not migrated ({exc}); an operator must run "
            f"`{MIGRATE_COMMAND}`"
        )
        log.error("%s", error)
        return 503, error_body(error.code, str(error)), None
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return 500, error_body("internal", "an internal error occurred"), None


async def on_error(request: Request, exc: Exception) -> Response:
    status, body, headers = error_answer(exc, request.method, request.url.path)
    return JSONResponse(body, status, headers=headers)


async def on_client_gone(request: Request, exc: Exception) -> Response:
    # The client closed, or was cut off by a read deadline, mid-body: nobody
    # is left to answer, and it is no server error worth a traceback.
    log.debug("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=400)


EXCEPTION_HANDLERS = {
    **{kind: on_error for kind in STATUS},
    HTTPException: on_error,
    ClientDisconnect: on_client_gone,
    RedisConnectionError: on_error,
    RedisTimeoutError: on_error,
    UndefinedTableError: on_error,
    UndefinedColumnError: on_error,
    # A handler that reached Postgres through the pool directly (not through
    # metering.ledger.database.acquire) gets the same 503 for an outage.
    **{kind: on_error for kind in DATABASE_DOWN if issubclass(kind, Exception)},
    Exception: on_error,
}
