"""An operator's correction of a balance: a signed amount with a reason, recorded
in the ledger as an `adjustment_added` or `adjustment_taken` entry (`python -m metering adjust`).

A credit adds money someone paid or is owed; an adjustment corrects a balance
that is wrong (a charge made in error, a credit given twice). A negative one
never takes money reserved for open calls and is refused beyond the available
balance; neither asks for an automatic recharge. Idempotent by adjustment id
within the idempotency window, like an ops credit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import fields
from metering.errors import InvalidRequest, raise_refusal
from metering.money import BALANCE_MICROS_MAX, CREDIT_MICROS_MAX
from metering.store import Store

REASON_LENGTH_MAX = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Adjustment:
    amount_micros: int
    balance_micros: int
    reserved_micros: int
    seq: int
    replayed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "amount_micros": self.amount_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
            "seq": self.seq,
        }


async def adjust_balance(
    store: Store, account_id: str, adjustment_id: str, amount_micros: int, reason: str
) -> Adjustment:
    """Add (positive) or take (negative) amount_micros, once per adjustment id."""
    fields.account_id(account_id)
    fields.request_id(adjustment_id, "adjustment_id")
    fields.integer(amount_micros, "amount_micros", -CREDIT_MICROS_MAX, CREDIT_MICROS_MAX)
    if amount_micros == 0:
        raise InvalidRequest("amount_micros", "an adjustment must move the balance (not 0)")
    fields.text(reason, "reason", REASON_LENGTH_MAX)
    if not reason.strip():
        raise InvalidRequest("reason", "an adjustment needs a reason")
    keys = store.account_keys(account_id)
    settings = store.settings
    result = await store.scripts["adjust"](
        store.redis,
        [keys.account, keys.request("adjust", adjustment_id), keys.shard.ledger, keys.shard.events],
        [
            account_id,
            amount_micros,
            adjustment_id,
            f"{amount_micros};{reason}",
            settings.idempotency_window_s,
            settings.ledger_backlog_max,
            settings.live_channel,
            f"ops_adjustment: {reason}",
            BALANCE_MICROS_MAX,
        ],
    )
    raise_refusal(result, account_id, f"adjustment {adjustment_id}")
    return Adjustment(
        int(result[2]), int(result[3]), int(result[4]), int(result[5]), result[1] == 1
    )
