"""The card on file.

Stripe holds the card: the browser registers it with Stripe's own elements and
hands this service a payment method id. The service keeps only Stripe ids,
brand, last four digits and expiry: in Postgres `cards_on_file` first, then
copied into the account's Redis hash for the dashboard (settings_sync.py says
how a failure in between is repaired).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import stripe

from metering import accounts, fields
from metering.errors import CardDeclined, InvalidRequest, Unavailable
from metering.payments import settings_sync
from metering.payments.stripe_client import failure_of, idempotency_key
from metering.store import Store

log = logging.getLogger(__name__)

PAYMENT_METHOD_ID = re.compile(r"pm_[A-Za-z0-9_]{1,120}")
SQL_CUSTOMER = "SELECT customer_id FROM stripe_customers WHERE account_id = $1"
SQL_INSERT_CUSTOMER = """
    INSERT INTO stripe_customers (account_id, customer_id) VALUES ($1, $2)
    ON CONFLICT (account_id) DO NOTHING"""
SQL_CARD = """
    SELECT c.payment_method_id, c.brand, c.last4, c.exp_month, c.exp_year, s.customer_id
    FROM cards_on_file c JOIN stripe_customers s USING (account_id)
    WHERE c.account_id = $1"""
SQL_UPSERT_CARD = """
    INSERT INTO cards_on_file (account_id, payment_method_id, brand, last4, exp_month, exp_year)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (account_id) DO UPDATE SET payment_method_id = $2, brand = $3, last4 = $4,
        exp_month = $5, exp_year = $6, updated_at = now()
    RETURNING (xmax = 0) AS inserted"""
SQL_CARD_FOR_UPDATE = "SELECT payment_method_id FROM cards_on_file WHERE account_id = $1 FOR UPDATE"
SQL_DELETE_CARD = "DELETE FROM cards_on_file WHERE account_id = $1 RETURNING payment_method_id"
SQL_DISABLE_RECHARGE = """
    UPDATE recharge_settings SET enabled = false, updated_at = now() WHERE account_id = $1"""
# A new card gives an open recharge episode its next attempt now.
SQL_RETRY_EPISODE_NOW = """
    UPDATE recharge_episodes SET next_attempt_at_us = 0, updated_at = now()
    WHERE account_id = $1 AND status = 'open'"""


@dataclasses.dataclass(frozen=True, slots=True)
class Card:
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    customer_id: str

    def as_dict(self) -> dict[str, Any]:
        """What a customer sees: never the Stripe ids."""
        return {
            "brand": self.brand,
            "last4": self.last4,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
        }


async def card_on_file(db: Any, account_id: str) -> Card | None:
    row = await db.fetchrow(SQL_CARD, account_id)
    if row is None:
        return None
    return Card(
        row["payment_method_id"],
        row["brand"],
        row["last4"].strip(),
        int(row["exp_month"]),
        int(row["exp_year"]),
        row["customer_id"],
    )


async def ensure_customer(db: Any, client: stripe.StripeClient, account_id: str) -> str:
    """The account's Stripe customer, created once (idempotent by account id)."""
    customer_id: str | None = await db.fetchval(SQL_CUSTOMER, account_id)
    if customer_id:
        return customer_id
    try:
        customer = await client.v1.customers.create_async(
            {"metadata": {"account_id": account_id}},
            {"idempotency_key": idempotency_key("customer", account_id)},
        )
    except stripe.StripeError as exc:
        raise Unavailable(f"Stripe did not create the customer: {failure_of(exc).reason}") from None
    await db.execute(SQL_INSERT_CUSTOMER, account_id, customer.id)
    # Another request may have won the race: the stored one is the customer.
    stored: str = await db.fetchval(SQL_CUSTOMER, account_id)
    return stored


async def set_card(
    store: Store, db: Any, client: stripe.StripeClient, account_id: str, payment_method_id: Any
) -> Card:
    """Register (or replace) the card on file from a Stripe payment method id."""
    fields.account_id(account_id)
    if not isinstance(payment_method_id, str) or not PAYMENT_METHOD_ID.fullmatch(payment_method_id):
        raise InvalidRequest(
            "payment_method_id", "payment_method_id must be a Stripe payment method id (pm_...)"
        )
    await accounts.get_account(store, account_id)
    customer_id = await ensure_customer(db, client, account_id)
    try:
        # Attaching is idempotent at Stripe; no key of ours, so re-adding a card
        # deleted earlier really attaches it again (the SDK still keys its retries).
        pm = await client.v1.payment_methods.attach_async(
            payment_method_id, {"customer": customer_id}
        )
    except stripe.CardError as exc:
        raise CardDeclined(f"the card was refused: {failure_of(exc).reason}") from None
    except stripe.InvalidRequestError as exc:
        why = exc.user_message or str(exc)
        raise InvalidRequest(
            "payment_method_id", f"Stripe refused the payment method: {why}"
        ) from None
    except stripe.StripeError as exc:
        raise Unavailable(f"Stripe did not answer: {failure_of(exc).reason}") from None
    if pm.type != "card" or pm.card is None:
        raise InvalidRequest("payment_method_id", "the payment method is not a card")
    card = Card(
        pm.id,
        str(pm.card.brand),
        str(pm.card.last4),
        int(pm.card.exp_month),
        int(pm.card.exp_year),
        customer_id,
    )
    async with db.acquire() as conn, conn.transaction():
        previous = await conn.fetchval(SQL_CARD_FOR_UPDATE, account_id)
        await conn.execute(
            SQL_UPSERT_CARD,
            account_id,
            card.payment_method_id,
            card.brand,
            card.last4,
            card.exp_month,
            card.exp_year,
        )
        await conn.execute(SQL_RETRY_EPISODE_NOW, account_id)
        await settings_sync.bump(conn, account_id)
    await settings_sync.push(store, db, account_id)
    if previous is not None and previous != card.payment_method_id:
        await _detach(client, previous)
    return card


async def delete_card(store: Store, db: Any, client: stripe.StripeClient, account_id: str) -> bool:
    """Remove the card on file; automatic recharge is turned off with it (it needs a card).
    Returns whether there was a card."""
    fields.account_id(account_id)
    await accounts.get_account(store, account_id)
    async with db.acquire() as conn, conn.transaction():
        removed = await conn.fetchval(SQL_DELETE_CARD, account_id)
        await conn.execute(SQL_DISABLE_RECHARGE, account_id)
        await settings_sync.bump(conn, account_id)
    await settings_sync.push(store, db, account_id)
    if removed:
        await _detach(client, removed)
    return removed is not None


async def _detach(client: stripe.StripeClient, payment_method_id: str) -> None:
    # Best effort: the card is already gone from this service, which is what
    # stops it being charged; a leftover attachment at Stripe is harmless.
    try:
        await client.v1.payment_methods.detach_async(payment_method_id)
    except stripe.StripeError as exc:
        log.warning("could not detach %s at Stripe: %s", payment_method_id, failure_of(exc).reason)
