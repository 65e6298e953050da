"""The activity view: an account's ledger entries by date range and kind, newest
first, with keyset pagination on seq (all its SQL is here).

from/to are inclusive UTC dates (`2026-11-01` is the whole day) or RFC 3339
timestamps (inclusive instants). show is all, debits or credits. A cursor is the
seq of the last entry of the previous page; the next page holds smaller seqs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from metering.entry_words import describe
from metering.errors import InvalidRequest, UnknownAccount
from metering.ledger.database import acquire
from metering.ledger_entries import CREDIT_ITEMS, ITEM_LABELS
from metering.money import MICROS_PER_USD
from metering.settings import Settings

SHOW = ("all", "debits", "credits")
PAGE_DEFAULT = 100
QUERY_PARAMS = ("from", "to", "show", "limit", "cursor")
# Bounds that stand for "no bound" so one plan shape serves every query.
SEQ_NONE = 2**62
AT_US_MIN, AT_US_MAX = 0, 2**62
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CURSOR = re.compile(r"[1-9][0-9]{0,17}")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ONE_US = dt.timedelta(microseconds=1)

PAGE_SQL = """
SELECT seq, item, amount_micros, balance_after_micros, request_id, at_us, detail
FROM ledger_entries
WHERE account_id = $1 AND at_us >= $2 AND at_us <= $3 AND seq < $4
  AND ($5 = 'all' OR (item = ANY($6::text[])) = ($5 = 'credits'))
ORDER BY seq DESC
LIMIT $7
"""
COUNT_SQL = """
SELECT count(*) FROM ledger_entries
WHERE account_id = $1 AND at_us >= $2 AND at_us <= $3 AND seq < $4
  AND ($5 = 'all' OR (item = ANY($6::text[])) = ($5 = 'credits'))
"""
ACCOUNT_SQL = "SELECT 1 FROM accounts WHERE id = $1"
CSV_COLUMNS = (
    "seq",
    "at",
    "item",
    "label",
    "amount_micros",
    "amount_usd",
    "balance_after_micros",
    "balance_after_usd",
    "request_id",
    "detail",
)


@dataclasses.dataclass(frozen=True, slots=True)
class ActivityQuery:
    account_id: str
    from_us: int
    to_us: int  # inclusive
    show: str
    limit: int
    before_seq: int  # SEQ_NONE for the first page

    def args(self, limit: int | None = None) -> list[Any]:
        args: list[Any] = [
            self.account_id,
            self.from_us,
            self.to_us,
            self.before_seq,
            self.show,
            sorted(CREDIT_ITEMS),
        ]
        return args if limit is None else [*args, limit]


def _to_us(moment: dt.datetime) -> int:
    return (moment - EPOCH) // ONE_US


def _parse_instant(value: str, field: str, end_of_day: bool) -> int:
    if DATE.fullmatch(value):
        try:
            day = dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        except ValueError:
            raise InvalidRequest(field, f"{field} is not a valid date: {value!r}") from None
        if end_of_day:
            if day.date() == dt.date.max:
                return AT_US_MAX
            return _to_us(day + dt.timedelta(days=1)) - 1
        return _to_us(day)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequest(
            field,
            f"{field} must be a date YYYY-MM-DD or an RFC 3339 "
            f"timestamp with a time zone, not {value!r}",
        )
    return _to_us(moment)


def parse_instant(value: str, field: str, end_of_day: bool) -> int:
    """Microseconds since the epoch of a day (its first or, with end_of_day, its
    last microsecond, UTC) or of an RFC 3339 instant; InvalidRequest naming field."""
    return _parse_instant(value, field, end_of_day)


def parse_query(account_id: str, params: Mapping[str, str], settings: Settings) -> ActivityQuery:
    """Validate the query string; each bad parameter is an InvalidRequest naming it."""
    for name in params:
        if name not in QUERY_PARAMS:
            raise InvalidRequest(
                name, f"unknown parameter {name!r}; expected: {', '.join(QUERY_PARAMS)}"
            )
    from_us = _parse_instant(params["from"], "from", False) if params.get("from") else AT_US_MIN
    to_us = _parse_instant(params["to"], "to", True) if params.get("to") else AT_US_MAX
    if from_us > to_us:
        raise InvalidRequest("from", "from must not be after to")
    show = params.get("show") or "all"
    if show not in SHOW:
        raise InvalidRequest("show", f"show must be one of: {', '.join(SHOW)}")
    page_max = settings.activity_page_max
    limit = min(PAGE_DEFAULT, page_max)
    if params.get("limit"):
        raw = params["limit"]
        if not raw.isdigit() or not 1 <= int(raw) <= page_max:
            raise InvalidRequest("limit", f"limit must be an integer from 1 to {page_max}")
        limit = int(raw)
    before_seq = SEQ_NONE
    if params.get("cursor"):
        if not CURSOR.fullmatch(params["cursor"]):
            raise InvalidRequest("cursor", "cursor must be the next_cursor of a previous page")
        before_seq = int(params["cursor"])
    return ActivityQuery(account_id, from_us, to_us, show, limit, before_seq)


def rfc3339(at_us: int) -> str:
    """Microseconds since the epoch as an RFC 3339 UTC timestamp, exactly."""
    moment = EPOCH + dt.timedelta(microseconds=at_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "item": row["item"],
        "label": ITEM_LABELS.get(row["item"], row["item"]),
        "description": describe(row["item"], row["detail"]),
        "amount_micros": row["amount_micros"],
        "balance_after_micros": row["balance_after_micros"],
        "request_id": row["request_id"],
        "at": rfc3339(row["at_us"]),
        "at_us": row["at_us"],
        "detail": row["detail"],
    }


@dataclasses.dataclass(frozen=True, slots=True)
class ActivityPage:
    account_id: str
    entries: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "entries": self.entries,
            "next_cursor": self.next_cursor,
        }


async def _check_account(conn: Any, account_id: str) -> None:
    if await conn.fetchval(ACCOUNT_SQL, account_id) is None:
        raise UnknownAccount(f"no account {account_id!r}")


async def account_activity(pool: Any, query: ActivityQuery, settings: Settings) -> ActivityPage:
    """One page, newest first; next_cursor is None on the last page."""
    async with acquire(pool, settings.database_timeout_s) as conn:
        await _check_account(conn, query.account_id)
        rows = await conn.fetch(PAGE_SQL, *query.args(query.limit + 1))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return ActivityPage(
        query.account_id, [entry_dict(r) for r in rows], str(rows[-1]["seq"]) if more else None
    )


def usd_text(amount_micros: int) -> str:
    """`-7500` -> `'-0.007500'`: an exact decimal for spreadsheets."""
    whole, frac = divmod(abs(amount_micros), MICROS_PER_USD)
    return f"{'-' if amount_micros < 0 else ''}{whole}.{frac:06d}"


# OWASP's rule against CSV injection: a cell starting with one of these is read
# by a spreadsheet as a formula (a leading tab or CR can smuggle one past it).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """A text cell that a spreadsheet shows as text, never evaluates: prefixed
    with an apostrophe when it starts like a formula. Request ids come from the
    switch (call ids from SIP Call-IDs, which outside callers choose)."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def csv_row(entry: dict[str, Any]) -> list[Any]:
    """One CSV row: integers and the decimals of usd_text are numbers (a debit's
    leading minus included) and stay as they are; every text cell is neutralised."""
    return [
        entry["seq"],
        entry["at"],
        spreadsheet_text(entry["item"]),
        spreadsheet_text(entry["label"]),
        entry["amount_micros"],
        usd_text(entry["amount_micros"]),
        entry["balance_after_micros"],
        usd_text(entry["balance_after_micros"]),
        spreadsheet_text(entry["request_id"]),
        spreadsheet_text(entry["detail"]),
    ]


async def check_export(pool: Any, query: ActivityQuery, settings: Settings) -> int:
    """The number of rows the export will hold; refuses one above the export limit
    before anything is sent."""
    async with acquire(pool, settings.database_timeout_s) as conn:
        await _check_account(conn, query.account_id)
        count = int(await conn.fetchval(COUNT_SQL, *query.args()))
    if count > settings.activity_export_rows_max:
        raise InvalidRequest(
            "from",
            f"the selection holds {count} entries; an export holds at "
            f"most {settings.activity_export_rows_max}: narrow the dates",
        )
    return count


async def export_pages(
    pool: Any, query: ActivityQuery, settings: Settings
) -> AsyncIterator[list[dict[str, Any]]]:
    """The whole selection, newest first, a page at a time (keyset, so rows written
    meanwhile never shift a page)."""
    page_rows = settings.activity_page_max
    remaining = settings.activity_export_rows_max
    before_seq = query.before_seq
    while remaining > 0:
        q = dataclasses.replace(query, before_seq=before_seq)
        async with acquire(pool, settings.database_timeout_s) as conn:
            rows = await conn.fetch(PAGE_SQL, *q.args(min(page_rows, remaining)))
        if not rows:
            return
        remaining -= len(rows)
        yield [entry_dict(r) for r in rows]
        if len(rows) < page_rows:
            return
        before_seq = rows[-1]["seq"]
