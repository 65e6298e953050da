"""Customer tokens on record: listing and revocation (all their SQL but the
insert, which metering/ledger/registry.py does with the account's row).

A token is named by its `token_id`, the first TOKEN_ID_CHARS hex characters of
its SHA-256: enough to tell an account's tokens apart, and nothing to sign in
with. Revocation is written to Postgres first, then the Redis key auth reads is
deleted, then every gateway is told on the live channel to close the token's
open sockets. A failure after the first step leaves a revoked row and a live
key: the retry (revoking again is harmless) or `rebuild`, which deletes the key
of every revoked token, completes it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson

from metering.errors import InvalidRequest, UnknownAccount, UnknownToken
from metering.keys import token_key
from metering.ledger.database import acquire
from metering.store import Store

TOKEN_ID_CHARS = 16
TOKEN_ID = re.compile(r"[0-9a-f]{16}")
# The live channel message that closes a revoked token's sockets (gateway/live_hub.py).
TOKEN_REVOKED_EVENT = "token_revoked"

COLUMNS = (
    "sha256, label, (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us, "
    "(extract(epoch FROM revoked_at) * 1000000)::bigint AS revoked_at_us"
)
LIST_SQL = (
    f"SELECT {COLUMNS} FROM customer_tokens WHERE account_id = $1 ORDER BY created_at, sha256"
)
REVOKE_ONE_SQL = f"""
UPDATE customer_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE account_id = $1 AND left(sha256, {TOKEN_ID_CHARS}) = $2
RETURNING {COLUMNS}
"""
REVOKE_ALL_SQL = f"""
UPDATE customer_tokens SET revoked_at = now()
WHERE account_id = $1 AND revoked_at IS NULL
RETURNING {COLUMNS}
"""
ACCOUNT_SQL = "SELECT 1 FROM accounts WHERE id = $1"
# For rebuild: the tokens to restore, and the revoked ones whose key must go.
LIVE_TOKENS_SQL = "SELECT sha256, account_id FROM customer_tokens WHERE revoked_at IS NULL"
REVOKED_TOKENS_SQL = "SELECT sha256 FROM customer_tokens WHERE revoked_at IS NOT NULL"


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerToken:
    token_id: str
    label: str
    created_at_us: int
    revoked_at_us: int | None
    sha256: str  # never shown: the Redis key and the live channel use it

    @classmethod
    def from_row(cls, row: Any) -> CustomerToken:
        return cls(
            token_id=row["sha256"][:TOKEN_ID_CHARS],
            label=row["label"],
            created_at_us=row["created_at_us"],
            revoked_at_us=row["revoked_at_us"],
            sha256=row["sha256"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "label": self.label,
            "created_at_us": self.created_at_us,
            "revoked_at_us": self.revoked_at_us,
        }


def token_id_of(sha256: str) -> str:
    return sha256[:TOKEN_ID_CHARS]


async def list_tokens(pool: Any, timeout_s: float, account_id: str) -> list[CustomerToken]:
    """Every token the account was issued, oldest first, revoked ones included."""
    async with acquire(pool, timeout_s) as conn:
        if await conn.fetchval(ACCOUNT_SQL, account_id) is None:
            raise UnknownAccount(f"no account {account_id!r}")
        return [CustomerToken.from_row(r) for r in await conn.fetch(LIST_SQL, account_id)]


async def revoke(
    store: Store, pool: Any, account_id: str, token_id: str | None
) -> list[CustomerToken]:
    """Revoke the account's token `token_id`, or every live one when None; returns
    the tokens revoked (a token revoked before is returned again, unchanged)."""
    if token_id is not None and not TOKEN_ID.fullmatch(token_id):
        raise InvalidRequest("token_id", f"a token id is {TOKEN_ID_CHARS} lowercase hex characters")
    async with acquire(pool, store.settings.database_timeout_s) as conn:
        if await conn.fetchval(ACCOUNT_SQL, account_id) is None:
            raise UnknownAccount(f"no account {account_id!r}")
        if token_id is None:
            rows = await conn.fetch(REVOKE_ALL_SQL, account_id)
        else:
            rows = await conn.fetch(REVOKE_ONE_SQL, account_id, token_id)
            if not rows:
                raise UnknownToken(f"account {account_id} has no token {token_id}")
    revoked = [CustomerToken.from_row(r) for r in rows]
    if revoked:
        async with store.redis.pipeline(transaction=False) as pipe:
            for t in revoked:
                pipe.delete(token_key(t.sha256))
            await pipe.execute()
        for t in revoked:
            message = {"account_id": account_id, "event": TOKEN_REVOKED_EVENT, "token": t.sha256}
            await store.redis.publish(store.settings.live_channel, orjson.dumps(message))
    return revoked
