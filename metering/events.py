"""Account events: what a customer is told about, by email and signed webhook.

Every event is one entry of its account's shard stream `m:{sNNN}:events`, with
the fields below. The Lua scripts append the low-balance ones in the script
that changes the balance (lua/_lib.lua append_event); the payments code appends
its own with `emit_event`. The notifier (metering/notify/) moves each entry into
Postgres (account_events) once, by event id, then emails and delivers webhooks.

    event_id    unique and stable: a repeated emit of the same fact has the same id
    type        one of EVENT_TYPES
    account_id  the account
    at_us       when it happened, microseconds since the epoch
    data        a JSON object (amounts in micros)
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from metering.store import Store

# The events a webhook may subscribe to, in the product's words.
EVENT_TYPES: dict[str, str] = {
    "balance.low": "the balance fell below the low-balance alert threshold",
    "balance.depleted": "the balance reached zero: calls, texts and numbers are blocked",
    "recharge.succeeded": "an automatic recharge was charged and credited",
    "recharge.failed": "an automatic recharge failed",
    "payment.succeeded": "a payment (pay now) was charged and credited",
    "number.renewed": "a phone number's renewal was charged",
    "number.renewal_failed": "a phone number's renewal could not be paid: it is suspended",
    "number.released": "a phone number was released",
}


def event_id(event_type: str, account_id: str, *parts: object) -> str:
    """The id of one fact: the same fact emitted twice has the same id."""
    return ":".join([event_type, account_id, *(str(p) for p in parts)])


async def emit_event(
    store: Store, account_id: str, event_type: str, event_id: str, data: dict[str, Any]
) -> None:
    """Append one event to the account's shard stream; the notifier records it once
    by event_id, so emitting the same fact again (a retry, a webhook and the worker
    both seeing one payment) is harmless."""
    assert event_type in EVENT_TYPES, event_type
    keys = store.account_keys(account_id)
    await store.redis.xadd(
        keys.shard.events,
        {
            "event_id": event_id,
            "type": event_type,
            "account_id": account_id,
            "at_us": time.time_ns() // 1_000,
            "data": orjson.dumps(data).decode(),
        },
    )
