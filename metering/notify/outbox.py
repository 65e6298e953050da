"""Account events in Postgres (all their SQL): each event id recorded once, with
what it still owes the customer: an email (for the events that send one) and
one webhook delivery per endpoint registered for its type at that moment."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from metering.events import EVENT_TYPES


@dataclasses.dataclass(frozen=True, slots=True)
class AccountEvent:
    event_id: str
    type: str
    account_id: str
    at_us: int
    data: dict[str, Any]

    @classmethod
    def from_stream(cls, fields: dict[str, str]) -> AccountEvent:
        """An entry of a shard's events stream (metering/events.py)."""
        return cls(
            event_id=fields["event_id"],
            type=fields["type"],
            account_id=fields["account_id"],
            at_us=int(fields["at_us"]),
            data=orjson.loads(fields.get("data") or "{}"),
        )

    def sends_email(self) -> bool:
        """Low balance, zero balance, a number suspended (its first failed renewal)
        and a number released are emailed; the rest only go to webhooks."""
        if self.type in ("balance.low", "balance.depleted", "number.released"):
            return True
        return self.type == "number.renewal_failed" and self.data.get("attempt") == 1

    def payload(self) -> dict[str, Any]:
        """The JSON body a webhook receives."""
        return {
            "id": self.event_id,
            "type": self.type,
            "account_id": self.account_id,
            "created_us": self.at_us,
            "data": self.data,
        }


# Record the event once; on the first recording fan it out to every endpoint
# (the account's and ops' global ones) registered for its type.
SQL_RECORD_EVENT = """
WITH new_event AS (
    INSERT INTO account_events (event_id, account_id, type, data, at_us, email_status)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO webhook_deliveries (event_id, webhook_id, status, next_attempt_at_us)
SELECT new_event.event_id, w.webhook_id, 'pending', 0
FROM new_event JOIN webhooks w
  ON (w.account_id = $2 OR w.account_id IS NULL) AND w.deleted_at IS NULL AND $3 = ANY(w.events)
"""


async def record_event(conn: Any, event: AccountEvent) -> None:
    """Record one event (idempotent by event id); conn may hold a transaction."""
    assert event.type in EVENT_TYPES, event.type
    await conn.execute(
        SQL_RECORD_EVENT,
        event.event_id,
        event.account_id,
        event.type,
        orjson.dumps(event.data).decode(),
        event.at_us,
        "pending" if event.sends_email() else "none",
    )


SQL_RECENT_EVENTS = """
SELECT event_id, type, data, at_us, email_status FROM account_events
WHERE account_id = $1 ORDER BY at_us DESC LIMIT $2"""


async def recent_events(conn: Any, account_id: str, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(SQL_RECENT_EVENTS, account_id, limit)
    return [
        {
            "event_id": r["event_id"],
            "type": r["type"],
            "data": orjson.loads(r["data"]),
            "at_us": r["at_us"],
            "email": r["email_status"],
        }
        for r in rows
    ]
