"""Adding funds: ops credits, pay now and automatic recharge all land here."""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import fields
from metering.errors import raise_refusal
from metering.money import BALANCE_MICROS_MAX, CREDIT_MICROS_MAX
from metering.store import Store

SOURCES = ("ops_credit", "pay_now", "automatic_recharge")
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
    settles_recharge: bool = False,
) -> Credit:
    """Credit the balance once per credit id (a payment id for Stripe money).

    settles_recharge clears the account's pending automatic-recharge mark in the
    same script, so the next fall below the threshold asks for a new recharge.
    """
    fields.account_id(account_id)
    fields.request_id(credit_id, "credit_id")
    fields.integer(amount_micros, "amount_micros", 1, CREDIT_MICROS_MAX)
    fields.choice(source, "source", SOURCES)
    fields.text(reason, "reason", REASON_LENGTH_MAX)
    keys = store.account_keys(account_id)
    settings = store.settings
    detail = f"{source}: {reason}" if reason else source
    result = await store.scripts.credit(
        store.redis,
        [keys.account, keys.request("credit", credit_id), keys.shard.ledger],
        [
            account_id,
            amount_micros,
            credit_id,
            f"{amount_micros};{source};{reason}",
            settings.idempotency_window_s,
            settings.ledger_backlog_max,
            settings.live_channel,
            detail,
            "1" if settles_recharge else "0",
            BALANCE_MICROS_MAX,
        ],
    )
    raise_refusal(result, account_id, f"credit {credit_id}")
    return Credit(int(result[2]), int(result[3]), int(result[4]), int(result[5]), result[1] == 1)
