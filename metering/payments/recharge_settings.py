"""Automatic recharge settings: validated as a whole, saved as one update.

The rules (the product's help page): the recharge amount must be greater than
50 USD, the threshold at least 10 USD, the failure email a valid address, and
recharge can only be enabled with a card on file. Every field is checked
before anything is written, so a refused update changes nothing. The settings
live in Postgres (durable) and in the account's Redis hash, where the debit
scripts read them; both are written in one Postgres transaction that holds a
single Redis HSET of all four fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import accounts, fields
from metering.account_state import publish_account_state
from metering.errors import InvalidRequest
from metering.money import CREDIT_MICROS_MAX, MICROS_PER_USD, format_usd
from metering.payments.stripe_client import to_cents
from metering.store import Store

# Strictly greater than this amount.
RECHARGE_AMOUNT_MICROS_ABOVE = 50 * MICROS_PER_USD
# At least this threshold.
RECHARGE_THRESHOLD_MICROS_MIN = 10 * MICROS_PER_USD
RECHARGE_THRESHOLD_MICROS_MAX = CREDIT_MICROS_MAX

SQL_UPSERT_SETTINGS = """
    INSERT INTO recharge_settings (account_id, enabled, amount_micros, threshold_micros,
        failure_email)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (account_id) DO UPDATE SET enabled = $2, amount_micros = $3,
        threshold_micros = $4, failure_email = $5, updated_at = now()"""


@dataclasses.dataclass(frozen=True, slots=True)
class RechargeSettings:
    enabled: bool
    amount_micros: int
    threshold_micros: int
    failure_email: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def redis_fields(self) -> dict[str, str | int]:
        """The account hash fields the scripts and AccountView read."""
        return {
            "recharge_enabled": "1" if self.enabled else "0",
            "recharge_amount_micros": self.amount_micros,
            "recharge_threshold_micros": self.threshold_micros,
            "recharge_failure_email": self.failure_email,
        }


def parse_settings(body: dict[str, Any]) -> RechargeSettings:
    """Check every field against its rule; raise InvalidRequest naming the first bad one."""
    amount = body.get("amount_micros")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidRequest("amount_micros", "amount_micros must be an integer")
    if amount <= RECHARGE_AMOUNT_MICROS_ABOVE:
        raise InvalidRequest(
            "amount_micros",
            f"amount_micros must be greater than "
            f"{RECHARGE_AMOUNT_MICROS_ABOVE} ({format_usd(RECHARGE_AMOUNT_MICROS_ABOVE)})",
        )
    fields.integer(amount, "amount_micros", RECHARGE_AMOUNT_MICROS_ABOVE + 1, CREDIT_MICROS_MAX)
    to_cents(amount)
    threshold = body.get("threshold_micros")
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise InvalidRequest("threshold_micros", "threshold_micros must be an integer")
    if threshold < RECHARGE_THRESHOLD_MICROS_MIN:
        raise InvalidRequest(
            "threshold_micros",
            f"threshold_micros must be at least "
            f"{RECHARGE_THRESHOLD_MICROS_MIN} ({format_usd(RECHARGE_THRESHOLD_MICROS_MIN)})",
        )
    fields.integer(
        threshold, "threshold_micros", RECHARGE_THRESHOLD_MICROS_MIN, RECHARGE_THRESHOLD_MICROS_MAX
    )
    email = fields.email(body.get("failure_email"), "failure_email")
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidRequest("enabled", "enabled must be true or false")
    return RechargeSettings(enabled, amount, threshold, email)


async def save_settings(
    store: Store, db: Any, account_id: str, body: dict[str, Any]
) -> RechargeSettings:
    """Validate and save the recharge settings of an account as one update."""
    fields.account_id(account_id)
    settings = parse_settings(body)
    account = await accounts.get_account(store, account_id)
    if settings.enabled and account.card is None:
        raise InvalidRequest(
            "enabled", "automatic recharge needs a card on file; register a card before enabling it"
        )
    keys = store.account_keys(account_id)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            SQL_UPSERT_SETTINGS,
            account_id,
            settings.enabled,
            settings.amount_micros,
            settings.threshold_micros,
            settings.failure_email,
        )
        # One HSET of all four fields, inside the Postgres transaction: if Redis
        # refuses, Postgres rolls back and nothing changed.
        await store.redis.hset(keys.account, mapping=settings.redis_fields())
    await publish_account_state(store, account_id)
    return settings
