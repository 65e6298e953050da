"""The phone number inventory in Postgres (all its SQL): what each account
holds, since when, paid until when, and its renewal state.

A number's periods are fixed by its purchase: period k runs from
bought_at + k * period_s; the purchase pays period 0 and each renewal charge
pays the next unpaid one, whoever asks for it (the scheduler, or the switch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metering import fields, phone_numbers
from metering.errors import UnknownNumber
from metering.events import event_id
from metering.ledger.database import acquire
from metering.notify.outbox import AccountEvent, record_event
from metering.settings import Settings
from metering.store import Store

US = 1_000_000
COLUMNS = (
    "account_id, number, status, renewal, purchase_id, bought_at_us, renewal_micros, "
    "periods_paid, period_s, next_attempt_at_us, failed_attempts, suspended_at_us, "
    "released_at_us, release_reason"
)

# A purchase (from the numbers stream). A repeated entry, or an older purchase
# arriving after a newer one, changes nothing; buying a number again starts a new
# holding with its own periods.
SQL_RECORD_PURCHASE = """
INSERT INTO numbers (account_id, number, status, renewal, purchase_id, bought_at_us,
    renewal_micros, periods_paid, period_s, next_attempt_at_us)
VALUES ($1, $2, 'active', $3, $4, $5::bigint, $6, 1, $7::float8,
    $5::bigint + ($7::float8 * 1000000)::bigint)
ON CONFLICT (account_id, number) DO UPDATE SET status = 'active', renewal = EXCLUDED.renewal,
    purchase_id = EXCLUDED.purchase_id, bought_at_us = EXCLUDED.bought_at_us,
    renewal_micros = EXCLUDED.renewal_micros, periods_paid = 1, period_s = EXCLUDED.period_s,
    next_attempt_at_us = EXCLUDED.next_attempt_at_us, failed_attempts = 0,
    suspended_at_us = NULL, released_at_us = NULL, release_reason = NULL, updated_at = now()
WHERE numbers.bought_at_us < EXCLUDED.bought_at_us"""
SQL_RECORD_RENEWAL = """
INSERT INTO number_renewals (account_id, number, renewal_id, period, source, charged_micros,
    at_us)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account_id, renewal_id) DO NOTHING
RETURNING period"""
# One more period paid: active again, due at the end of the paid time.
SQL_PERIOD_PAID = """
UPDATE numbers SET periods_paid = periods_paid + 1, status = 'active', failed_attempts = 0,
    suspended_at_us = NULL,
    next_attempt_at_us = bought_at_us + ((periods_paid + 1) * period_s * 1000000)::bigint,
    updated_at = now()
WHERE account_id = $1 AND number = $2 AND status <> 'released'
RETURNING periods_paid,
    bought_at_us + (periods_paid * period_s * 1000000)::bigint AS paid_until_us"""
SQL_FOR_UPDATE = f"SELECT {COLUMNS} FROM numbers WHERE account_id = $1 AND number = $2 FOR UPDATE"
SQL_SUSPENDED = """
UPDATE numbers SET status = 'suspended', failed_attempts = $3, next_attempt_at_us = $4,
    suspended_at_us = coalesce(suspended_at_us, $5), updated_at = now()
WHERE account_id = $1 AND number = $2"""
SQL_RETRY_LATER = """
UPDATE numbers SET next_attempt_at_us = $3, updated_at = now()
WHERE account_id = $1 AND number = $2"""
SQL_RELEASED = """
UPDATE numbers SET status = 'released', released_at_us = $3, release_reason = $4,
    updated_at = now()
WHERE account_id = $1 AND number = $2"""
# Ops release a number the scheduler has not recorded yet: a released row whose
# bought_at is now, so the purchase arriving later does not bring it back.
SQL_RELEASED_TOMBSTONE = """
INSERT INTO numbers (account_id, number, status, renewal, purchase_id, bought_at_us,
    renewal_micros, periods_paid, period_s, next_attempt_at_us, released_at_us, release_reason)
VALUES ($1, $2, 'released', 'switch', '', $3, 0, 0, $4, 0, $3, $5)
ON CONFLICT (account_id, number) DO NOTHING"""
SQL_LIST = f"SELECT {COLUMNS} FROM numbers WHERE account_id = $1 ORDER BY number"
SQL_SUSPENDED_ALL = f"""
SELECT {COLUMNS} FROM numbers WHERE status = 'suspended' ORDER BY suspended_at_us LIMIT $1"""


@dataclasses.dataclass(frozen=True, slots=True)
class HeldNumber:
    """One row of the inventory, as the API shows it."""

    account_id: str
    number: str
    status: str
    renewal: str
    purchase_id: str
    bought_at_us: int
    renewal_micros: int
    periods_paid: int
    period_s: float
    next_attempt_at_us: int
    failed_attempts: int
    suspended_at_us: int | None
    released_at_us: int | None
    release_reason: str | None

    @classmethod
    def from_row(cls, row: Any) -> HeldNumber:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    @property
    def paid_until_us(self) -> int:
        return self.bought_at_us + int(self.periods_paid * self.period_s * US)

    def renewal_id(self) -> str:
        """The scheduler's id for the renewal of the next unpaid period: one charge
        per number, holding and period (the debit script's idempotency key)."""
        return f"auto:{self.number}:{self.bought_at_us}:{self.periods_paid}"

    def event_id(self, event_type: str, *more: object) -> str:
        return event_id(event_type, self.account_id, self.number, self.bought_at_us, *more)

    def as_dict(self, settings: Settings) -> dict[str, Any]:
        held = self.status != "released"
        release_at = None
        if self.status == "suspended":
            release_at = self.paid_until_us + int(settings.number_release_grace_s * US)
        return {
            "number": self.number,
            "status": self.status,
            "renewal": self.renewal,
            "purchase_id": self.purchase_id,
            "bought_at_us": self.bought_at_us,
            "monthly_micros": self.renewal_micros,
            "period_s": self.period_s,
            "periods_paid": self.periods_paid,
            "paid_until_us": self.paid_until_us if held else None,
            "next_renewal_at_us": self.paid_until_us if held else None,
            "next_attempt_at_us": self.next_attempt_at_us
            if held and self.renewal == "automatic"
            else None,
            "failed_attempts": self.failed_attempts,
            "suspended_at_us": self.suspended_at_us,
            "release_at_us": release_at,
            "released_at_us": self.released_at_us,
            "release_reason": self.release_reason,
            "recorded": True,
        }


async def record_purchase(
    conn: Any,
    account_id: str,
    number: str,
    mode: str,
    purchase_id: str,
    at_us: int,
    renewal_micros: int,
    period_s: float,
) -> None:
    await conn.execute(
        SQL_RECORD_PURCHASE,
        account_id,
        number,
        mode if mode in ("automatic", "switch") else "automatic",
        purchase_id,
        at_us,
        renewal_micros,
        period_s,
    )


async def record_period_paid(
    conn: Any,
    account_id: str,
    number: str,
    renewal_id: str,
    period: int,
    source: str,
    charged_micros: int,
    at_us: int,
) -> tuple[int, int] | None:
    """Count one renewal charge once (by renewal id) as one more period paid.
    Returns (periods paid, paid until) or None when it was counted before or the
    number is not recorded (yet)."""
    counted = await conn.fetchval(
        SQL_RECORD_RENEWAL, account_id, number, renewal_id, period, source, charged_micros, at_us
    )
    if counted is None:
        return None
    row = await conn.fetchrow(SQL_PERIOD_PAID, account_id, number)
    if row is None:
        return None
    return int(row["periods_paid"]), int(row["paid_until_us"])


async def mark_released(conn: Any, held: HeldNumber, reason: str, at_us: int) -> None:
    """The number is no longer the account's: recorded with the event, in conn's transaction."""
    await conn.execute(SQL_RELEASED, held.account_id, held.number, at_us, reason)
    await record_event(
        conn,
        AccountEvent(
            held.event_id("number.released"),
            "number.released",
            held.account_id,
            at_us,
            {
                "number": held.number,
                "reason": reason,
                "released_at_us": at_us,
                "paid_until_us": held.paid_until_us,
            },
        ),
    )


async def list_numbers(
    store: Store, pool: Any, account_id: str, include_released: bool = False
) -> list[dict[str, Any]]:
    """The account's numbers: the inventory, with the live status the switch's
    requests see, plus numbers bought a moment ago and not recorded yet."""
    fields.account_id(account_id)
    live = await phone_numbers.held_numbers(store, account_id)
    async with acquire(pool, store.settings.database_timeout_s) as conn:
        rows = [HeldNumber.from_row(r) for r in await conn.fetch(SQL_LIST, account_id)]
    out = []
    for held in rows:
        view = held.as_dict(store.settings)
        if held.number in live and held.status != "released":
            view["status"] = live.pop(held.number)
        elif held.status == "released":
            if held.number in live:  # bought again since; the purchase is on its way
                continue
            if not include_released:
                continue
        out.append(view)
    for number, status in sorted(live.items()):
        out.append({"number": number, "status": status, "recorded": False})
    return out


async def suspended_numbers(pool: Any, settings: Settings, limit: int) -> list[dict[str, Any]]:
    """Every suspended number, longest suspended first (the ops page)."""
    async with acquire(pool, settings.database_timeout_s) as conn:
        rows = await conn.fetch(SQL_SUSPENDED_ALL, limit)
    return [
        {"account_id": r["account_id"], **HeldNumber.from_row(r).as_dict(settings)} for r in rows
    ]


async def release_number(
    store: Store, pool: Any, account_id: str, number: str, reason: str, at_us: int
) -> dict[str, Any]:
    """Ops release a number: the live store first (calls naming it are refused at
    once), then the inventory, in a transaction that waits for a scheduler working
    on the same number."""
    fields.account_id(account_id)
    fields.phone_number(number)
    async with acquire(pool, store.settings.database_timeout_s) as conn, conn.transaction():
        row = await conn.fetchrow(SQL_FOR_UPDATE, account_id, number)
        changed, _before = await phone_numbers.change_status(store, account_id, number, "release")
        if row is None or row["status"] == "released":
            if not changed:
                raise UnknownNumber(
                    f"account {account_id} holds no phone number {number}", number=number
                )
            await conn.execute(
                SQL_RELEASED_TOMBSTONE,
                account_id,
                number,
                at_us,
                store.settings.number_renewal_period_s,
                reason,
            )
            if row is not None:  # released before, bought again, not recorded yet
                await conn.execute(SQL_RELEASED, account_id, number, at_us, reason)
            return {"number": number, "status": "released", "release_reason": reason}
        held = HeldNumber.from_row(row)
        await mark_released(conn, held, reason, at_us)
    return {"number": number, "status": "released", "release_reason": reason}
