"""Automatic recharge settings: validated as a whole, saved as one update.

The rules (the product's help page, and what keeps a card from being drained):
the recharge amount must be greater than 50 USD and at most
`recharge_micros_max` (like pay now's cap), the threshold at least 10 USD and
below the amount (one recharge must lift the balance above the threshold, or
every debit after it would ask for another), the failure email a valid
address, and recharge can only be enabled with a card on file. Every field is
checked before anything is written, so a refused update changes nothing. The
settings are saved in Postgres, then copied into the account's Redis hash where
the debit scripts read them (settings_sync.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import accounts, fields
from metering.errors import InvalidRequest
from metering.money import CREDIT_MICROS_MAX, MICROS_PER_USD, format_usd
from metering.payments import settings_sync
from metering.payments.cards import SQL_CARD_FOR_UPDATE
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
SQL_SELECT_SETTINGS = """
    SELECT enabled, amount_micros, threshold_micros, failure_email
    FROM recharge_settings WHERE account_id = $1"""
SQL_TURN_OFF = """
    UPDATE recharge_settings SET enabled = false, updated_at = now() WHERE account_id = $1"""


@dataclasses.dataclass(frozen=True, slots=True)
class RechargeSettings:
    enabled: bool
    amount_micros: int
    threshold_micros: int
    failure_email: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def amount_refusal(amount_micros: int, threshold_micros: int, amount_micros_max: int) -> str:
    """Why one recharge of amount_micros below threshold_micros must not be charged
    (the worker asks again at charge time: settings saved under older rules), or ''."""
    if amount_micros > amount_micros_max:
        return (
            f"the recharge amount {format_usd(amount_micros)} is above the limit of "
            f"{format_usd(amount_micros_max)}"
        )
    if amount_micros <= threshold_micros:
        return (
            f"the recharge amount {format_usd(amount_micros)} does not lift the balance "
            f"above the threshold of {format_usd(threshold_micros)}"
        )
    return ""


def parse_settings(body: dict[str, Any], amount_micros_max: int) -> RechargeSettings:
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
    if amount > amount_micros_max:
        raise InvalidRequest(
            "amount_micros",
            f"amount_micros must be at most {amount_micros_max} "
            f"({format_usd(amount_micros_max)}) for one automatic recharge",
        )
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
    if threshold >= amount:
        raise InvalidRequest(
            "threshold_micros",
            f"threshold_micros must be below the recharge amount ({format_usd(amount)}): "
            "one recharge has to lift the balance above the threshold",
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
    settings = parse_settings(body, store.settings.recharge_micros_max)
    await accounts.get_account(store, account_id)
    async with db.acquire() as conn, conn.transaction():
        # The card row is locked, so a card deleted meanwhile cannot leave
        # recharge enabled without one.
        if settings.enabled and await conn.fetchval(SQL_CARD_FOR_UPDATE, account_id) is None:
            raise InvalidRequest(
                "enabled",
                "automatic recharge needs a card on file; register a card before enabling it",
            )
        await conn.execute(
            SQL_UPSERT_SETTINGS,
            account_id,
            settings.enabled,
            settings.amount_micros,
            settings.threshold_micros,
            settings.failure_email,
        )
        await settings_sync.bump(conn, account_id)
    await settings_sync.push(store, db, account_id)
    return settings


async def turn_off(store: Store, db: Any, account_id: str) -> None:
    """Turn automatic recharge off (the worker, for settings it must not charge)."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(SQL_TURN_OFF, account_id)
        await settings_sync.bump(conn, account_id)
    await settings_sync.push(store, db, account_id)


async def saved_settings(db: Any, account_id: str) -> RechargeSettings | None:
    """The durable settings of an account (None: never saved)."""
    row = await db.fetchrow(SQL_SELECT_SETTINGS, account_id)
    if row is None:
        return None
    return RechargeSettings(
        row["enabled"], row["amount_micros"], row["threshold_micros"], row["failure_email"]
    )


def operator_refusal(current: RechargeSettings, wanted: RechargeSettings) -> str:
    """Why an operator (not the card holder) may not make this change, or ''.

    Charging a card is the card holder's act: an operator may turn automatic
    recharge off, lower the amount or the threshold (smaller or later charges)
    and change the failure email, never turn it on or make it charge more or sooner.
    """
    if wanted.enabled and not current.enabled:
        return "only the customer may turn automatic recharge on (dashboard or API)"
    if wanted.amount_micros > current.amount_micros:
        return (
            f"only the customer may raise the recharge amount (now "
            f"{format_usd(current.amount_micros)})"
        )
    if wanted.threshold_micros > current.threshold_micros:
        return (
            f"only the customer may raise the recharge threshold (now "
            f"{format_usd(current.threshold_micros)})"
        )
    return ""
