"""Adding funds: ops credits, pay now and automatic recharge all land here."""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import fields
from metering.errors import raise_refusal
from metering.money import BALANCE_MICROS_MAX, CREDIT_MICROS_MAX
from metering.store import Store

# Money a Stripe charge brought in: credited once per charge, forever.
CHARGE_SOURCES = ("pay_now", "automatic_recharge")
# Money an operator adds by hand, once per credit id within the idempotency window.
OPS_SOURCES = ("ops_credit",)
SOURCES = (*OPS_SOURCES, *CHARGE_SOURCES)
REASON_LENGTH_MAX = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Credit:
    credited_micros: int
    balance_micros: int
    reserved_micros: int
    seq: int
    replayed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "credited_micros": self.credited_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
            "seq": self.seq,
        }


async def add_funds(
    store: Store,
    account_id: str,
    credit_id: str,
    amount_micros: int,
    source: str,
    reason: str = "",
) -> Credit:
    """Credit the balance once per credit id within the idempotency window (an ops
    credit; Stripe money goes through add_charge_funds)."""
    fields.request_id(credit_id, "credit_id")
    fields.choice(source, "source", OPS_SOURCES)
    keys = store.account_keys(account_id)
    return await _credit(
        store,
        account_id,
        keys.request("credit", credit_id),
        credit_id,
        amount_micros,
        source,
        reason,
        f"{amount_micros};{source};{reason}",
        store.settings.idempotency_window_s,
        "",
    )


def charge_credit_fingerprint(amount_micros: int, source: str) -> str:
    """What the credit of one Stripe charge is checked against on a replay; rebuild
    recomputes it from the ledger entry, so it holds only what the entry holds."""
    return f"{amount_micros};{source}"


def charge_credit_answer(
    amount_micros: int, source: str, balance_micros: int, reserved_micros: int, seq: int
) -> str:
    """The stored first answer of a charge's credit, as lua/_lib.lua's answer_text
    writes it (rebuild writes it back from the ledger)."""
    fingerprint = charge_credit_fingerprint(amount_micros, source)
    return f"{fingerprint}\n{amount_micros},{balance_micros},{reserved_micros},{seq}"


def charge_source_of(detail: str) -> str | None:
    """The charge source of a ledger entry's detail ("pay_now: ..."), or None for a
    credit that no Stripe charge backs."""
    source = detail.split(":", 1)[0]
    return source if source in CHARGE_SOURCES else None


async def add_charge_funds(
    store: Store,
    account_id: str,
    payment_intent_id: str,
    amount_micros: int,
    source: str,
    reason: str,
    settles_episode_us: int | None = None,
) -> Credit:
    """Credit the money of one Stripe charge, once per PaymentIntent, forever.

    The first answer is kept without expiry under the PaymentIntent (and rebuild
    restores it from the ledger, whose entry carries the PaymentIntent as its
    request id), so a replay after the idempotency window, a restart or a rebuild
    answers the first credit again. settles_episode_us clears the account's
    pending automatic-recharge mark in the same script, if it is that episode's.
    """
    fields.choice(source, "source", CHARGE_SOURCES)
    fields.request_id(payment_intent_id, "payment_intent_id")
    keys = store.account_keys(account_id)
    return await _credit(
        store,
        account_id,
        keys.charge_credit(payment_intent_id),
        payment_intent_id,
        amount_micros,
        source,
        reason,
        charge_credit_fingerprint(amount_micros, source),
        0,
        "" if settles_episode_us is None else str(settles_episode_us),
    )


async def _credit(
    store: Store,
    account_id: str,
    request_key: str,
    request_id: str,
    amount_micros: int,
    source: str,
    reason: str,
    fingerprint: str,
    window_s: int,
    settles_episode: str,
) -> Credit:
    fields.account_id(account_id)
    fields.integer(amount_micros, "amount_micros", 1, CREDIT_MICROS_MAX)
    fields.choice(source, "source", SOURCES)
    fields.text(reason, "reason", REASON_LENGTH_MAX)
    keys = store.account_keys(account_id)
    settings = store.settings
    detail = f"{source}: {reason}" if reason else source
    result = await store.scripts.credit(
        store.redis,
        [keys.account, request_key, keys.shard.ledger],
        [
            account_id,
            amount_micros,
            request_id,
            fingerprint,
            window_s,
            settings.ledger_backlog_max,
            settings.live_channel,
            detail,
            settles_episode,
            BALANCE_MICROS_MAX,
        ],
    )
    raise_refusal(result, account_id, f"credit {request_id}")
    return Credit(int(result[2]), int(result[3]), int(result[4]), int(result[5]), result[1] == 1)
