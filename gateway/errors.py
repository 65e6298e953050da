"""The one table from error types to HTTP answers. Every error body is
{"error": <code>, "message": <sentence>, ...details}."""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import Forbidden, Unauthorized
from gateway.bodies import (
    BodyTooLarge,
    DuplicateKey,
    MalformedBody,
    MissingField,
    UnsupportedMediaType,
)
from gateway.responses import JSONResponse, error_body
from metering import errors
from metering.notify.webhooks import UnknownWebhook

log = logging.getLogger(__name__)

STATUS: dict[type[Exception], int] = {
    MalformedBody: 400,
    Unauthorized: 401,
    errors.InsufficientFunds: 402,
    Forbidden: 403,
    errors.UnknownAccount: 404,
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
    MissingField: 422,
    errors.InvalidRequest: 422,
    errors.BalanceLimit: 422,
    errors.ConcurrentCallLimit: 429,
    # payments
    errors.CardDeclined: 402,
    errors.AuthenticationRequired: 402,
    errors.PaymentFailed: 402,
    errors.NoCardOnFile: 409,
    errors.WebhookRejected: 400,
    errors.LedgerBacklogFull: 503,
    errors.Unavailable: 503,
}

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def status_of(exc: Exception) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


async def on_known_error(request: Request, exc: Exception) -> Response:
    details = {}
    if isinstance(exc, errors.MeteringError):
        details = dict(exc.details)
    elif isinstance(exc, MissingField | DuplicateKey):
        details = {"field": exc.field}
    code = getattr(exc, "code", "error")
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(error_body(code, str(exc), **details), status_of(exc), headers=headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, f"{request.method} {request.url.path}: {exc.detail}"), exc.status_code
    )


async def on_redis_down(request: Request, exc: Exception) -> Response:
    log.warning("redis unavailable: %s", exc)
    return JSONResponse(error_body("unavailable", "the balance store did not answer; retry"), 503)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal", "an internal error occurred"), 500)


EXCEPTION_HANDLERS = {
    **{kind: on_known_error for kind in STATUS},
    HTTPException: on_http_error,
    RedisConnectionError: on_redis_down,
    RedisTimeoutError: on_redis_down,
    Exception: on_unexpected,
}
