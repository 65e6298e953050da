"""Registering a card the way Stripe documents it for later off-session charges:
the service creates a SetupIntent for the account's Stripe customer, the
browser confirms it with Stripe.js (card element, 3-D Secure when the bank asks),
and the service reads the resulting payment method from Stripe and keeps only
its brand, last four digits and expiry (metering/payments/cards.py).

No card number passes through this service: the browser sends the card to
Stripe, and this service only ever sees the SetupIntent's id.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import stripe
from stripe.params import SetupIntentCreateParams

from metering import accounts, fields
from metering.errors import InvalidRequest, Unavailable
from metering.payments.cards import Card, ensure_customer, set_card
from metering.payments.stripe_client import failure_of
from metering.store import Store

SETUP_INTENT_ID = re.compile(r"seti_[A-Za-z0-9_]{1,120}")


@dataclasses.dataclass(frozen=True, slots=True)
class CardSetup:
    """What the browser needs to confirm the SetupIntent with Stripe.js."""

    setup_intent_id: str
    client_secret: str

    def as_dict(self) -> dict[str, Any]:
        return {"setup_intent_id": self.setup_intent_id, "client_secret": self.client_secret}


async def start_card_setup(
    store: Store, db: Any, client: stripe.StripeClient, account_id: str
) -> CardSetup:
    """A new SetupIntent for the account's customer, for off-session use (automatic
    recharge), so the bank's authentication happens now, with the customer there."""
    fields.account_id(account_id)
    await accounts.get_account(store, account_id)
    customer_id = await ensure_customer(db, client, account_id)
    params: SetupIntentCreateParams = {
        "customer": customer_id,
        "usage": "off_session",
        "metadata": {"account_id": account_id},
    }
    try:
        intent = await client.v1.setup_intents.create_async(params)
    except stripe.StripeError as exc:
        raise Unavailable(
            f"Stripe did not start the card set-up: {failure_of(exc).reason}"
        ) from None
    if not intent.client_secret:
        raise Unavailable("Stripe answered a SetupIntent without a client secret")
    return CardSetup(intent.id, intent.client_secret)


async def finish_card_setup(
    store: Store, db: Any, client: stripe.StripeClient, account_id: str, setup_intent_id: Any
) -> Card:
    """Keep the card of a SetupIntent the browser confirmed: it must be this
    account's, and succeeded."""
    fields.account_id(account_id)
    if not isinstance(setup_intent_id, str) or not SETUP_INTENT_ID.fullmatch(setup_intent_id):
        raise InvalidRequest(
            "setup_intent_id", "setup_intent_id must be a Stripe SetupIntent id (seti_...)"
        )
    customer_id = await ensure_customer(db, client, account_id)
    try:
        intent = await client.v1.setup_intents.retrieve_async(setup_intent_id)
    except stripe.InvalidRequestError:
        raise InvalidRequest("setup_intent_id", "Stripe knows no such card set-up") from None
    except stripe.StripeError as exc:
        raise Unavailable(f"Stripe did not answer: {failure_of(exc).reason}") from None
    if intent.customer != customer_id:
        # Another account's set-up: say nothing about it.
        raise InvalidRequest("setup_intent_id", "Stripe knows no such card set-up")
    if intent.status != "succeeded" or not intent.payment_method:
        raise InvalidRequest(
            "setup_intent_id",
            f"the card was not confirmed (the set-up is {intent.status}); enter the card again",
        )
    pm = intent.payment_method
    payment_method_id = pm if isinstance(pm, str) else pm.id
    return await set_card(store, db, client, account_id, payment_method_id)


async def register_card(
    store: Store, db: Any, client: stripe.StripeClient, account_id: str, body: dict[str, Any]
) -> Card:
    """PUT .../card: from a confirmed SetupIntent (the dashboard), or from a
    payment method id created elsewhere with Stripe.js (API clients); one of the two."""
    given = [name for name in ("setup_intent_id", "payment_method_id") if name in body]
    if len(given) != 1:
        raise InvalidRequest(
            "setup_intent_id",
            "send either setup_intent_id or payment_method_id, not both"
            if given
            else "send setup_intent_id (a confirmed SetupIntent) or payment_method_id",
        )
    if given[0] == "setup_intent_id":
        return await finish_card_setup(store, db, client, account_id, body["setup_intent_id"])
    return await set_card(store, db, client, account_id, body["payment_method_id"])
