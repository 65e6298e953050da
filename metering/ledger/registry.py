"""The durable copy of accounts and customer tokens in Postgres (all their SQL).

Order of writes: Postgres first, then Redis. A failure between the two leaves
Postgres with an account (or token) Redis lacks, which is harmless: the request
fails, its retry completes the Redis side (creation is idempotent), and
`rebuild` would restore it anyway. The other order could leave a live account
with money moving that a lost Redis could not bring back.

Accounts hold no balance here: an account's balance is its ledger's last
balance_after_micros (see metering/ledger/rebuild.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from metering import accounts, fields
from metering.accounts import AccountView, token_digest
from metering.errors import AccountExists
from metering.keys import token_key
from metering.ledger.database import acquire
from metering.rate_card import RateCard
from metering.store import Store

RATE_CARD_FIELDS = RateCard.__struct_fields__
# Account hash fields (metering/keys.py) kept in the accounts table, by kind.
# Columns have the same names as the hash fields. Later issues add theirs here
# (and a migration): rebuild and the write-through both follow this table.
INT_FIELDS = (
    *RATE_CARD_FIELDS,
    "max_concurrent_calls",
    "recharge_amount_micros",
    "recharge_threshold_micros",
    "created_at_us",
)
BOOL_FIELDS = ("recharge_enabled",)
TEXT_FIELDS = ("recharge_failure_email",)
PERSISTED_FIELDS = (*INT_FIELDS, *BOOL_FIELDS, *TEXT_FIELDS)

INSERT_ACCOUNT_SQL = f"""
INSERT INTO accounts (id, {", ".join(RATE_CARD_FIELDS)}, max_concurrent_calls, created_at_us)
VALUES ($1, {", ".join(f"${i + 2}" for i in range(len(RATE_CARD_FIELDS)))},
        ${len(RATE_CARD_FIELDS) + 2}, ${len(RATE_CARD_FIELDS) + 3})
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
SELECT_ACCOUNT_SQL = f"SELECT {', '.join(PERSISTED_FIELDS)} FROM accounts WHERE id = $1"
INSERT_TOKEN_SQL = "INSERT INTO customer_tokens (sha256, account_id, label) VALUES ($1, $2, $3)"


async def create_account(
    store: Store, pool: Any, account_id: str, rate_card: RateCard, max_concurrent_calls: int = 0
) -> tuple[AccountView, bool]:
    """Create the account durably (Postgres), then live (Redis). Idempotent like
    `accounts.create_account`: the same creation again returns created=False."""
    fields.account_id(account_id)
    fields.integer(max_concurrent_calls, "max_concurrent_calls", 0, accounts.CONCURRENT_CALLS_MAX)
    card = rate_card.as_dict()
    timeout_s = store.settings.database_timeout_s
    async with acquire(pool, timeout_s) as conn:
        inserted = await conn.fetchval(
            INSERT_ACCOUNT_SQL,
            account_id,
            *[card[n] for n in RATE_CARD_FIELDS],
            max_concurrent_calls,
            time.time_ns() // 1000,
        )
        if inserted is None:
            row = await conn.fetchrow(SELECT_ACCOUNT_SQL, account_id)
            same = all(row[n] == card[n] for n in RATE_CARD_FIELDS) and (
                row["max_concurrent_calls"] == max_concurrent_calls
            )
            if not same:
                raise AccountExists(f"account {account_id} exists with another rate card")
    try:
        view, created = await accounts.create_account(
            store, account_id, rate_card, max_concurrent_calls
        )
    except AccountExists:
        if inserted is not None:
            # Redis already had this id with another card (made before write-through):
            # take back the row just inserted so the two stores do not disagree.
            async with acquire(pool, timeout_s) as conn:
                await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
        raise
    # Keep Redis's creation time, the one the account view shows.
    async with acquire(pool, timeout_s) as conn:
        await conn.execute(
            "UPDATE accounts SET created_at_us = $2 WHERE id = $1 AND created_at_us <> $2",
            account_id,
            view.created_at_us,
        )
    return view, created


async def issue_customer_token(store: Store, pool: Any, account_id: str, label: str) -> str:
    """A new URL-safe token for the account's dashboard; only its SHA-256 is kept,
    in Postgres first (so rebuild restores it), then in Redis (where auth looks)."""
    fields.text(label, "label", accounts.TOKEN_LABEL_LENGTH_MAX)
    view = await accounts.get_account(store, account_id)
    token = secrets.token_urlsafe(32)
    digest = token_digest(token)
    card = view.rate_card.as_dict()
    async with acquire(pool, store.settings.database_timeout_s) as conn, conn.transaction():
        # An account made before write-through existed (Redis only) gets its
        # durable row here, so the token's row has an account to point to.
        await conn.execute(
            INSERT_ACCOUNT_SQL,
            account_id,
            *[card[n] for n in RATE_CARD_FIELDS],
            view.max_concurrent_calls,
            view.created_at_us,
        )
        await conn.execute(INSERT_TOKEN_SQL, digest, account_id, label)
    await store.redis.set(token_key(digest), account_id)
    return token


def hash_fields(row: Mapping[str, Any]) -> dict[str, str]:
    """An accounts row as the Redis account hash stores it (for rebuild)."""
    out: dict[str, str] = {}
    for name in PERSISTED_FIELDS:
        value = row[name]
        if name in BOOL_FIELDS:
            out[name] = "1" if value else "0"
        elif value is not None:
            out[name] = str(value)
    card = RateCard(**{n: int(row[n]) for n in RATE_CARD_FIELDS})
    # The creation fingerprint create_account.lua compares, so re-posting the same
    # account after a rebuild is still a harmless repeat.
    out["create_fingerprint"] = f"{card.fingerprint()};{row['max_concurrent_calls']}"
    return out
