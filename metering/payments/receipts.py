"""Receipts: every card payment (pay now, automatic recharge) as a record the
customer can open and print, and the words an activity line needs for it
("Payment by Visa ending in 4242"). All its SQL is here.

A receipt is read from the `payments` row (amount, kind, status, when, the
PaymentIntent), the card Stripe charged (the PaymentIntent's payment method,
asked of Stripe once and kept in `receipt_cards`), and the balance after the
credit (its ledger entry, once the ledger writer has it). A failed automatic
recharge attempt has a record too (from `recharge_attempts`): the failure email
links to it.

A receipt link carries an HMAC-SHA256 of the account and the receipt, made with
settings.receipt_link_key, so it opens that one receipt without a token (an
email cannot carry the customer's token). Links in emails start with
settings.public_url; the pages use the path alone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import stripe

from metering import fields
from metering.errors import InvalidRequest
from metering.payments.decline_words import failure_words
from metering.settings import Settings

log = logging.getLogger(__name__)

PAYMENT_INTENT = re.compile(r"pi_[A-Za-z0-9_]{1,120}")
ATTEMPT = re.compile(r"(\d{1,20})-(\d{1,6})")
SIGNATURE_CHARS = 32
# Cards asked of Stripe per activity page at most; the rest say "by card".
CARD_LOOKUPS_MAX = 10

SQL_PAYMENT = """
    SELECT payment_id, kind, amount_micros, status, payment_intent_id, failure_reason,
        created_at, updated_at
    FROM payments WHERE account_id = $1 AND payment_id = $2"""
SQL_PAYMENTS_BY_INTENT = """
    SELECT payment_id, kind, payment_intent_id FROM payments
    WHERE account_id = $1 AND payment_intent_id = ANY($2::text[])"""
SQL_ATTEMPT = """
    SELECT a.amount_micros, a.outcome, a.reason, a.payment_intent_id, a.at, e.status
    FROM recharge_attempts a JOIN recharge_episodes e USING (account_id, episode_us)
    WHERE a.account_id = $1 AND a.episode_us = $2 AND a.attempt = $3"""
# The credit of a payment: its ledger request id is the payment id, or its
# PaymentIntent (both forms exist).
SQL_CREDIT_ENTRY = """
    SELECT balance_after_micros, at_us FROM ledger_entries
    WHERE account_id = $1 AND item = 'funds_added' AND request_id = ANY($2::text[])
    ORDER BY seq LIMIT 1"""
SQL_CARDS = """
    SELECT payment_intent_id, brand, last4 FROM receipt_cards
    WHERE payment_intent_id = ANY($1::text[])"""
SQL_REMEMBER_CARD = """
    INSERT INTO receipt_cards (payment_intent_id, brand, last4) VALUES ($1, $2, $3)
    ON CONFLICT (payment_intent_id) DO NOTHING"""


# ---- links ---------------------------------------------------------------------


def signature(settings: Settings, account_id: str, reference: str) -> str:
    """The link signature of one receipt ("payment=<id>" or "attempt=<episode>-<n>")."""
    mac = hmac.new(
        settings.receipt_link_key.encode(),
        f"receipt\n{account_id}\n{reference}".encode(),
        hashlib.sha256,
    ).digest()
    return base64.urlsafe_b64encode(mac).decode()[:SIGNATURE_CHARS]


def signature_ok(settings: Settings, account_id: str, reference: str, given: str) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters, and a link
    # may carry anything.
    expected = signature(settings, account_id, reference).encode()
    return hmac.compare_digest(expected, given.encode("utf-8", "replace"))


def reference_of(params: Mapping[str, str]) -> str:
    """The receipt a query names: "payment=<payment id>" or "attempt=<episode>-<n>";
    InvalidRequest naming the parameter otherwise."""
    if params.get("payment"):
        fields.request_id(params["payment"], "payment")
        return "payment=" + params["payment"]
    if not ATTEMPT.fullmatch(params.get("attempt", "")):
        raise InvalidRequest(
            "payment", "name a receipt: payment=<payment id> or attempt=<episode>-<n>"
        )
    return "attempt=" + params["attempt"]


def receipt_path(
    settings: Settings, account_id: str, *, payment_id: str = "", attempt: str = ""
) -> str:
    """/receipt?account=..&payment=..&signature=.. (or attempt= for a failed recharge)."""
    name, value = ("payment", payment_id) if payment_id else ("attempt", attempt)
    query = urllib.parse.urlencode(
        {
            "account": account_id,
            name: value,
            "signature": signature(settings, account_id, f"{name}={value}"),
        }
    )
    return f"/receipt?{query}"


def receipt_url(settings: Settings, account_id: str, **which: str) -> str:
    """The receipt link for an email: public_url and the path."""
    return settings.public_url.rstrip("/") + receipt_path(settings, account_id, **which)


def attempt_reference(episode_us: int, attempt: int) -> str:
    return f"{episode_us}-{attempt}"


# ---- cards ----------------------------------------------------------------------


async def cards_of(
    db: Any, client: stripe.StripeClient, intents: list[str]
) -> dict[str, tuple[str, str]]:
    """(brand, last4) of the card each PaymentIntent charged: kept ones, and the
    rest asked of Stripe (at most CARD_LOOKUPS_MAX at a time) and kept."""
    wanted = sorted({pi for pi in intents if pi})
    if not wanted:
        return {}
    known = {
        r["payment_intent_id"]: (r["brand"], r["last4"]) for r in await db.fetch(SQL_CARDS, wanted)
    }
    missing = [pi for pi in wanted if pi not in known][:CARD_LOOKUPS_MAX]
    found = await asyncio.gather(*(_card_at_stripe(client, pi) for pi in missing))
    for pi, card in zip(missing, found, strict=True):
        if card is not None:
            known[pi] = card
            await db.execute(SQL_REMEMBER_CARD, pi, card[0], card[1])
    return known


async def _card_at_stripe(
    client: stripe.StripeClient, payment_intent_id: str
) -> tuple[str, str] | None:
    try:
        intent = await client.v1.payment_intents.retrieve_async(payment_intent_id)
        pm = intent.payment_method
        if pm is None:
            return None
        method = (
            pm if not isinstance(pm, str) else await client.v1.payment_methods.retrieve_async(pm)
        )
    except stripe.StripeError as exc:
        # The receipt still opens; it says "card" without the last digits.
        log.warning("could not read the card of %s at Stripe: %s", payment_intent_id, exc)
        return None
    card = method.card
    if card is None:
        return None
    return str(card.brand), str(card.last4)


def card_words(card: tuple[str, str] | None) -> str:
    """("visa", "4242") -> "Visa ending in 4242"."""
    if card is None:
        return "card"
    brand, last4 = card
    return f"{brand.capitalize() if brand else 'Card'} ending in {last4}"


# ---- receipts ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    account_id: str
    kind: str  # pay_now | automatic_recharge
    status: str  # succeeded | failed | pending
    amount_micros: int
    currency: str
    card: tuple[str, str] | None
    at_us: int
    balance_after_micros: int | None  # None until the ledger writer has the credit
    payment_id: str | None
    payment_intent_id: str | None
    failure: str | None  # in the customer's words

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "kind": self.kind,
            "status": self.status,
            "amount_micros": self.amount_micros,
            "currency": self.currency,
            "card": {"brand": self.card[0], "last4": self.card[1]} if self.card else None,
            "at_us": self.at_us,
            "balance_after_micros": self.balance_after_micros,
            "payment_id": self.payment_id,
            "payment_intent_id": self.payment_intent_id,
            "failure": self.failure,
        }


def _us(moment: Any) -> int:
    return int(moment.timestamp() * 1_000_000)


async def find_receipt(
    db: Any,
    client: stripe.StripeClient,
    settings: Settings,
    account_id: str,
    params: Mapping[str, str],
) -> Receipt | None:
    """The receipt a query names (payment=<id> or attempt=<episode>-<n>), or None."""
    if params.get("payment"):
        row = await db.fetchrow(SQL_PAYMENT, account_id, params["payment"])
        if row is None:
            return None
        intent = row["payment_intent_id"]
        entry = await db.fetchrow(
            SQL_CREDIT_ENTRY, account_id, [row["payment_id"], *([intent] if intent else [])]
        )
        cards = await cards_of(db, client, [intent] if intent else [])
        return Receipt(
            account_id,
            row["kind"],
            row["status"],
            row["amount_micros"],
            settings.stripe_currency,
            cards.get(intent) if intent else None,
            entry["at_us"] if entry else _us(row["updated_at"]),
            entry["balance_after_micros"] if entry else None,
            row["payment_id"],
            intent,
            failure_words(row["failure_reason"]) if row["status"] == "failed" else None,
        )
    match = ATTEMPT.fullmatch(params.get("attempt", ""))
    if match is None:
        raise InvalidRequest(
            "payment", "name a receipt: payment=<payment id> or attempt=<episode>-<n>"
        )
    row = await db.fetchrow(SQL_ATTEMPT, account_id, int(match.group(1)), int(match.group(2)))
    if row is None:
        return None
    intent = row["payment_intent_id"]
    cards = await cards_of(db, client, [intent] if intent else [])
    return Receipt(
        account_id,
        "automatic_recharge",
        "succeeded" if row["outcome"] == "succeeded" else "failed",
        row["amount_micros"],
        settings.stripe_currency,
        cards.get(intent) if intent else None,
        _us(row["at"]),
        None,
        None,
        intent,
        failure_words(row["reason"]) if row["outcome"] != "succeeded" else None,
    )


# ---- activity lines ------------------------------------------------------------------


def _intent_of(entry: Mapping[str, Any]) -> str | None:
    request_id = str(entry.get("request_id") or "")
    if PAYMENT_INTENT.fullmatch(request_id):
        return request_id
    found = PAYMENT_INTENT.search(str(entry.get("detail") or ""))
    return found.group(0) if found else None


async def annotate_payments(
    db: Any,
    client: stripe.StripeClient,
    settings: Settings,
    account_id: str,
    entries: list[dict[str, Any]],
) -> None:
    """Give each card payment's activity line the card it was charged to and its
    receipt link (`receipt_url`, a path)."""
    paid = {id(e): pi for e in entries if e["item"] == "funds_added" and (pi := _intent_of(e))}
    if not paid:
        return
    intents = sorted(set(paid.values()))
    rows = await db.fetch(SQL_PAYMENTS_BY_INTENT, account_id, intents)
    payment_of = {r["payment_intent_id"]: r for r in rows}
    cards = await cards_of(db, client, intents)
    for entry in entries:
        pi = paid.get(id(entry))
        row = payment_of.get(pi) if pi else None
        if row is None:
            continue
        what = "Payment" if row["kind"] == "pay_now" else "Automatic recharge"
        entry["description"] = f"{what} by {card_words(cards.get(row['payment_intent_id']))}"
        entry["receipt_url"] = receipt_path(settings, account_id, payment_id=row["payment_id"])
