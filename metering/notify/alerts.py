"""Low-balance alert settings: a threshold of the customer's own (separate from
automatic recharge) and the address the alerts go to. Saved like the recharge
settings: Postgres (durable) and the account's Redis hash, where the scripts
read the threshold (lua/_lib.lua balance_alerts), in one Postgres transaction
holding one Redis transaction."""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import accounts, fields
from metering.money import BALANCE_MICROS_MAX
from metering.store import Store

SQL_UPSERT = """
INSERT INTO alert_settings (account_id, low_balance_threshold_micros, email) VALUES ($1, $2, $3)
ON CONFLICT (account_id) DO UPDATE SET low_balance_threshold_micros = $2, email = $3,
    updated_at = now()"""


@dataclasses.dataclass(frozen=True, slots=True)
class AlertSettings:
    low_balance_threshold_micros: int  # 0: no low-balance alert (zero is always told)
    email: str  # '' : the recharge failure email, if any

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_settings(body: dict[str, Any]) -> AlertSettings:
    threshold = fields.integer(
        body.get("low_balance_threshold_micros"),
        "low_balance_threshold_micros",
        0,
        BALANCE_MICROS_MAX,
    )
    email = body.get("email", "")
    if email != "":
        fields.email(email, "email")
    return AlertSettings(threshold, email)


async def save_settings(
    store: Store, db: Any, account_id: str, body: dict[str, Any]
) -> AlertSettings:
    """Validate and save as one update. The low-balance mark is cleared, so the next
    debit below the new threshold alerts (once)."""
    fields.account_id(account_id)
    settings = parse_settings(body)
    await accounts.get_account(store, account_id)
    key = store.account_keys(account_id).account
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            SQL_UPSERT, account_id, settings.low_balance_threshold_micros, settings.email
        )
        async with store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "alert_low_balance_micros": settings.low_balance_threshold_micros,
                    "alert_email": settings.email,
                },
            )
            pipe.hdel(key, "alert_low_since_us")
            await pipe.execute()
    return settings
