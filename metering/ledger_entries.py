"""The ledger entry as the Lua scripts write it to a shard's ledger stream, and
the billing items in the product's words. The ledger writer reads entries back
here; the recharge stream's format lives with its reader,
metering/payments/recharge_worker.py.

Ledger stream `m:{sNNN}:ledger`, one XADD per balance change, fields:

    account_id            the account
    seq                   per-account gapless sequence number, 1, 2, 3, ...
    item                  one of ITEMS
    amount_micros         signed change of the balance (debits negative)
    balance_after_micros  the balance right after this entry
    request_id            the client's id (call id, message id, credit id, ...)
    at_us                 Redis server time, microseconds since the epoch
    detail                free text: the number bought, the call's billed seconds,
                          the credit's source
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

# Billing items in the product's words (DESIGN.md "Billing items").
ITEM_LABELS: dict[str, str] = {
    "ring_through_attempt": "ring-through connection attempt",
    "number_purchase": "phone number charge (purchase)",
    "number_renewal": "phone number charge (renewal)",
    "call_outbound": "phone call charge (outbound)",
    "call_inbound": "phone call charge (inbound)",
    "sms_outbound": "outgoing text message",
    "sms_inbound": "incoming text message",
    "funds_added": "adding funds",
    # An operator's correction (`python -m metering adjust`), with its reason.
    "adjustment_added": "balance adjustment (added)",
    "adjustment_taken": "balance adjustment (taken)",
}
ITEMS = frozenset(ITEM_LABELS)
CREDIT_ITEMS = frozenset({"funds_added", "adjustment_added"})


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerEntry:
    account_id: str
    seq: int
    item: str
    amount_micros: int
    balance_after_micros: int
    request_id: str
    at_us: int
    detail: str

    @classmethod
    def from_stream(cls, fields: Mapping[str, str]) -> LedgerEntry:
        """Parse one stream entry's fields (decoded to str)."""
        return cls(
            account_id=fields["account_id"],
            seq=int(fields["seq"]),
            item=fields["item"],
            amount_micros=int(fields["amount_micros"]),
            balance_after_micros=int(fields["balance_after_micros"]),
            request_id=fields["request_id"],
            at_us=int(fields["at_us"]),
            detail=fields.get("detail", ""),
        )
