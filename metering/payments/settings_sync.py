"""The card on file and the recharge settings: Postgres first, then Redis, never
the other way round, and never a Redis write inside a Postgres transaction.

A change is made in one Postgres transaction that also bumps the account's
`payment_settings_sync.version`. Once that has committed, the whole current
state (card and recharge settings, read back from Postgres) is copied into the
account's Redis hash with that version (lua/sync_settings.lua keeps the newest,
so an older copy arriving late changes nothing), `synced_version` records it,
and open pages are told. If Redis or the process fails in between, Postgres
holds the change and says it is not yet in Redis: the recharge worker's repair
copies it within `recharge_repair_grace_s` plus one repair interval, and the
worker reads the card and the settings from Postgres before it charges, so a
card deleted or a recharge turned off is never charged meanwhile.
"""

from __future__ import annotations

from typing import Any

from metering import crash_points
from metering.account_state import publish_account_state
from metering.errors import raise_refusal
from metering.store import Store

SQL_BUMP = """
    INSERT INTO payment_settings_sync (account_id, version) VALUES ($1, 1)
    ON CONFLICT (account_id) DO UPDATE SET version = payment_settings_sync.version + 1,
        updated_at = now()
    RETURNING version"""
SQL_STATE = """
    SELECT s.version, r.enabled, r.amount_micros, r.threshold_micros, r.failure_email,
        c.payment_method_id, c.brand, c.last4, c.exp_month, c.exp_year
    FROM payment_settings_sync s
    LEFT JOIN recharge_settings r USING (account_id)
    LEFT JOIN cards_on_file c USING (account_id)
    WHERE s.account_id = $1"""
SQL_SYNCED = """
    UPDATE payment_settings_sync SET synced_version = greatest(synced_version, $2)
    WHERE account_id = $1"""
SQL_VERSIONS = (
    "SELECT account_id, version FROM payment_settings_sync WHERE account_id = ANY($1::text[])"
)
SQL_UNSYNCED = """
    SELECT account_id FROM payment_settings_sync
    WHERE synced_version < version AND updated_at < now() - make_interval(secs => $1)
    ORDER BY updated_at LIMIT $2"""

# Account hash field <- Postgres column: what this module owns in the hash.
FIELDS = {
    "recharge_enabled": "enabled",
    "recharge_amount_micros": "amount_micros",
    "recharge_threshold_micros": "threshold_micros",
    "recharge_failure_email": "failure_email",
    "card_payment_method_id": "payment_method_id",
    "card_brand": "brand",
    "card_last4": "last4",
    "card_exp_month": "exp_month",
    "card_exp_year": "exp_year",
}


async def bump(conn: Any, account_id: str) -> int:
    """Inside the transaction that changes the card or the recharge settings."""
    version: int = await conn.fetchval(SQL_BUMP, account_id)
    return version


def _hash_value(value: Any) -> str:
    if value is None:
        return ""  # removes the field
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).strip()


async def push(store: Store, db: Any, account_id: str) -> bool:
    """Copy the account's committed card and recharge settings into Redis and tell
    open pages. Returns whether Redis took this copy (False: it held a newer one,
    or the account has no change recorded)."""
    crash_points.reached(store.settings, crash_points.SETTINGS_COMMITTED)
    row = await db.fetchrow(SQL_STATE, account_id)
    if row is None:
        return False
    args: list[Any] = [row["version"]]
    for field, column in FIELDS.items():
        args += [field, _hash_value(row[column])]
    keys = store.account_keys(account_id)
    result = await store.scripts["sync_settings"](store.redis, [keys.account], args)
    raise_refusal(result, account_id)
    await db.execute(SQL_SYNCED, account_id, row["version"])
    await publish_account_state(store, account_id)
    return bool(result[1] == 1)


async def repair(store: Store, db: Any) -> int:
    """Copy changes that did not reach Redis (older than the repair grace, at most
    recharge_batch_max of them); returns how many were copied."""
    s = store.settings
    rows = await db.fetch(SQL_UNSYNCED, s.recharge_repair_grace_s, s.recharge_batch_max)
    for row in rows:
        await push(store, db, row["account_id"])
    return len(rows)


async def repair_lost(store: Store, db: Any, held: dict[str, int]) -> int:
    """Copy again the card and settings of accounts whose Redis copy (held: account
    id -> the version in its hash) is older than Postgres's. A Redis that lost its
    last writes (a host crash) may hold an older copy while `synced_version` says
    the newer one was copied. Returns how many were copied."""
    if not held:
        return 0
    copied = 0
    for row in await db.fetch(SQL_VERSIONS, list(held)):
        if held[row["account_id"]] < row["version"]:
            copied += int(await push(store, db, row["account_id"]))
    return copied
