"""Bearer-token roles: switch and ops tokens from settings (compared in constant
time), customer tokens issued per account (looked up by their SHA-256)."""

from __future__ import annotations

import dataclasses
import hmac

from starlette.requests import HTTPConnection

from gateway.auth_limits import AuthFailureLimiter
from metering.accounts import TOKEN_LENGTH_MAX, account_for_digest, token_digest
from metering.settings import Settings
from metering.store import Store

SWITCH, OPS, CUSTOMER = "switch", "ops", "customer"


class Unauthorized(Exception):
    code = "unauthorized"


class Forbidden(Exception):
    code = "forbidden"


class TooManyAuthFailures(Exception):
    code = "too_many_auth_failures"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"too many failed authentications from this address or with this token's "
            f"first characters; retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    role: str
    account_id: str | None  # set for customers: the one account they may see
    token_id: str | None = None  # set for customers: the token's SHA-256 (hex)


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    # Browsers cannot set headers on a websocket: they pass ?token=.
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("token") or None
    return None


async def authenticate(
    conn: HTTPConnection,
    settings: Settings,
    store: Store,
    roles: frozenset[str],
    account_id: str | None = None,
) -> Caller:
    """The caller, if its role is one of `roles` (and, for a customer, the account is its own)."""
    token = bearer_token(conn)
    if token is None:
        raise Unauthorized("an Authorization: Bearer <token> header is required")
    if hmac.compare_digest(token.encode(), settings.switch_token.encode()):
        caller = Caller(SWITCH, None)
    elif hmac.compare_digest(token.encode(), settings.ops_token.encode()):
        caller = Caller(OPS, None)
    else:
        caller = await _customer(conn, store, token)
    if caller.role not in roles:
        raise Forbidden(f"the {caller.role} role may not do this")
    if caller.role == CUSTOMER and account_id is not None and caller.account_id != account_id:
        raise Forbidden("this token belongs to another account")
    return caller


async def _customer(conn: HTTPConnection, store: Store, token: str) -> Caller:
    """The customer whose token this is. Refused unread while the client address
    or the token's first characters are blocked for failing (gateway/auth_limits.py)."""
    limiter: AuthFailureLimiter = conn.state.auth_limiter
    client = conn.client.host if conn.client else ""
    retry_after_s = limiter.retry_after_s(client, token)
    if retry_after_s is not None:
        limiter.note_refused()
        raise TooManyAuthFailures(retry_after_s)
    digest = token_digest(token)
    owner = await account_for_digest(store, digest) if len(token) <= TOKEN_LENGTH_MAX else None
    if owner is None:
        retry_after_s = limiter.failed(client, token)
        if retry_after_s is not None:
            limiter.note_refused()
            raise TooManyAuthFailures(retry_after_s)
        raise Unauthorized("the bearer token is not valid")
    return Caller(CUSTOMER, owner, digest)
