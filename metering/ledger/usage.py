"""Usage at a glance: an account's ledger over a range of days in the customer's
own time zone, as totals per billing item (count and amount), spend per day by
item, and the balance at the end of each day (all its SQL is here).

Days are calendar days in `time_zone` (an IANA name such as Europe/Berlin),
`from` and `to` inclusive, at most settings.usage_days_max of them. Two
aggregate queries over the (account_id, at_us) index, whatever the number of
entries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Mapping
from typing import Any

from metering.entry_words import ITEM_NAMES
from metering.errors import InvalidRequest, UnknownAccount
from metering.ledger.activity import DATE, EPOCH, ONE_US
from metering.ledger.database import acquire
from metering.settings import Settings

QUERY_PARAMS = ("from", "to", "time_zone")
TIME_ZONE_LENGTH_MAX = 64

# Per day and item: how many entries and their sum (debits negative).
DAILY_SQL = """
SELECT to_char(to_timestamp(at_us / 1000000.0) AT TIME ZONE $4, 'YYYY-MM-DD') AS day,
       item, count(*) AS entries, sum(amount_micros) AS amount_micros
FROM ledger_entries
WHERE account_id = $1 AND at_us >= $2 AND at_us <= $3
GROUP BY day, item
ORDER BY day, item
"""
# The balance after each day's last entry.
CLOSING_SQL = """
SELECT DISTINCT ON (day) day, seq, balance_after_micros
FROM (SELECT to_char(to_timestamp(at_us / 1000000.0) AT TIME ZONE $4, 'YYYY-MM-DD') AS day,
             seq, balance_after_micros
      FROM ledger_entries
      WHERE account_id = $1 AND at_us >= $2 AND at_us <= $3) AS entries
ORDER BY day, seq DESC
"""
ACCOUNT_SQL = "SELECT 1 FROM accounts WHERE id = $1"


@dataclasses.dataclass(frozen=True, slots=True)
class UsageQuery:
    account_id: str
    first_day: dt.date
    last_day: dt.date
    time_zone: str
    from_us: int
    to_us: int  # inclusive


def _day(params: Mapping[str, str], name: str) -> dt.date:
    value = params.get(name, "")
    if not DATE.fullmatch(value):
        raise InvalidRequest(name, f"{name} must be a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(name, f"{name} is not a valid date: {value!r}") from None


def _us(moment: dt.datetime) -> int:
    return (moment - EPOCH) // ONE_US


def parse_query(account_id: str, params: Mapping[str, str], settings: Settings) -> UsageQuery:
    """Validate the query string; each bad parameter is an InvalidRequest naming it."""
    for name in params:
        if name not in QUERY_PARAMS:
            raise InvalidRequest(
                name, f"unknown parameter {name!r}; expected: {', '.join(QUERY_PARAMS)}"
            )
    first, last = _day(params, "from"), _day(params, "to")
    if first > last:
        raise InvalidRequest("from", "from must not be after to")
    days = (last - first).days + 1
    if days > settings.usage_days_max:
        raise InvalidRequest(
            "from", f"the range holds {days} days; at most {settings.usage_days_max}"
        )
    name = params.get("time_zone") or "UTC"
    try:
        if len(name) > TIME_ZONE_LENGTH_MAX:
            raise ValueError(name)
        zone = zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise InvalidRequest(
            "time_zone", "time_zone must be an IANA time zone such as Europe/Berlin"
        ) from None
    start = dt.datetime.combine(first, dt.time(), zone)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone)
    return UsageQuery(account_id, first, last, name, _us(start), _us(end) - 1)


async def account_usage(pool: Any, query: UsageQuery, settings: Settings) -> dict[str, Any]:
    """Totals per item, spend per day by item and closing balances, for the range."""
    args = [query.account_id, query.from_us, query.to_us, query.time_zone]
    async with acquire(pool, settings.database_timeout_s) as conn:
        if await conn.fetchval(ACCOUNT_SQL, query.account_id) is None:
            raise UnknownAccount(f"no account {query.account_id!r}")
        daily = await conn.fetch(DAILY_SQL, *args)
        closing_rows = await conn.fetch(CLOSING_SQL, *args)
    closing = {r["day"]: r["balance_after_micros"] for r in closing_rows}
    totals: dict[str, list[int]] = {}
    days: dict[str, dict[str, int]] = {}
    for row in daily:
        count, amount = int(row["entries"]), int(row["amount_micros"])
        total = totals.setdefault(row["item"], [0, 0])
        total[0] += count
        total[1] += amount
        if amount < 0:
            days.setdefault(row["day"], {})[row["item"]] = -amount
    return {
        "account_id": query.account_id,
        "from": query.first_day.isoformat(),
        "to": query.last_day.isoformat(),
        "time_zone": query.time_zone,
        "items": [
            {
                "item": item,
                "name": ITEM_NAMES.get(item, item),
                "count": count,
                "amount_micros": amount,
            }
            for item, (count, amount) in sorted(totals.items(), key=lambda t: t[1][1])
        ],
        "spent_micros": sum(-amount for _, amount in totals.values() if amount < 0),
        # The newest entry counted: a page knows whether a change it saw is in yet.
        "last_seq": max((r["seq"] for r in closing_rows), default=0),
        "days": [
            {
                "day": day,
                "spent_micros": days.get(day, {}),
                "closing_balance_micros": closing[day],
            }
            for day in sorted(closing)
        ],
    }
