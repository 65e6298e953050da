"""One-shot debits: texts, ring-through attempts, number purchases and renewals.

Each is one EVALSHA of debit.lua: rate, check `balance - reserved >= cost`,
charge, ledger entry, publish, remember the answer under the request id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import fields
from metering.errors import raise_refusal
from metering.rate_card import ONE_SHOT_PRICE_FIELD
from metering.store import Store

DIRECTIONS = ("outbound", "inbound")


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    item: str
    charged_micros: int
    balance_micros: int
    reserved_micros: int
    seq: int
    replayed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "charged_micros": self.charged_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
            "seq": self.seq,
        }


async def debit(
    store: Store,
    account_id: str,
    item: str,
    kind: str,
    request_id: str,
    fingerprint: str,
    detail: str = "",
) -> Charge:
    """Charge one billing item at the account's rate; idempotent by (kind, request id),
    so a message id reused with the other direction is a conflict, not a second charge."""
    price_field = ONE_SHOT_PRICE_FIELD[item]
    keys = store.account_keys(account_id)
    settings = store.settings
    result = await store.scripts.debit(
        store.redis,
        [keys.account, keys.request(kind, request_id), keys.shard.ledger, keys.shard.recharge],
        [
            account_id,
            item,
            price_field,
            request_id,
            fingerprint,
            settings.idempotency_window_s,
            settings.ledger_backlog_max,
            settings.live_channel,
            detail,
        ],
    )
    raise_refusal(result, account_id, f"{item} {request_id}")
    return Charge(
        item, int(result[2]), int(result[3]), int(result[4]), int(result[5]), result[1] == 1
    )


async def message(store: Store, account_id: str, message_id: str, direction: str) -> Charge:
    """An outgoing or incoming text message."""
    fields.account_id(account_id)
    fields.request_id(message_id, "message_id")
    fields.choice(direction, "direction", DIRECTIONS)
    return await debit(store, account_id, f"sms_{direction}", "message", message_id, direction)


async def ring_through_attempt(store: Store, account_id: str, attempt_id: str) -> Charge:
    """One connection attempt of a workflow's ring-through."""
    fields.account_id(account_id)
    fields.request_id(attempt_id, "attempt_id")
    return await debit(store, account_id, "ring_through_attempt", "attempt", attempt_id, "")


async def number_purchase(store: Store, account_id: str, purchase_id: str, number: str) -> Charge:
    fields.account_id(account_id)
    fields.request_id(purchase_id, "purchase_id")
    fields.phone_number(number)
    return await debit(
        store, account_id, "number_purchase", "purchase", purchase_id, number, number
    )


async def number_renewal(store: Store, account_id: str, renewal_id: str, number: str) -> Charge:
    """A renewal the balance cannot pay is refused like any other debit."""
    fields.account_id(account_id)
    fields.request_id(renewal_id, "renewal_id")
    fields.phone_number(number)
    return await debit(store, account_id, "number_renewal", "renewal", renewal_id, number, number)
