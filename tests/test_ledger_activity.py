"""The activity API on a seeded ledger: date boundaries, show, cursor pages, CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator

import httpx
import pytest

from devkit.testing import RATE_CARD, GatewayProcess
from metering.ledger import registry
from metering.rate_card import RateCard
from tests.conftest import OPS
from tests.fixtures_ledger import LedgerWorld, ledger_world

PAGE_MAX = 10
UTC = dt.UTC


def us(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


# (at, item, amount): seqs 1..6 sit on the March boundaries, 7..30 hourly on April 2.
SEEDED = [
    ("2026-02-28T23:59:59.999999Z", "funds_added", 100_000_000),
    ("2026-03-01T00:00:00.000000Z", "sms_outbound", -7_500),
    ("2026-03-01T12:00:00.000000Z", "ring_through_attempt", -2_000),
    ("2026-03-15T08:00:00.000000Z", "funds_added", 5_000_000),
    ("2026-03-31T23:59:59.999999Z", "number_purchase", -1_000_000),
    ("2026-04-01T00:00:00.000000Z", "sms_inbound", -1_000),
] + [
    (
        f"2026-04-02T{h:02d}:00:00.000000Z",
        "funds_added" if h % 3 == 0 else "sms_outbound",
        1_000 if h % 3 == 0 else -7_500,
    )
    for h in range(24)
]
CREDITS = {i + 1 for i, e in enumerate(SEEDED) if e[1] == "funds_added"}


class Seeded:
    def __init__(
        self,
        world: LedgerWorld,
        http: httpx.AsyncClient,
        account_id: str,
        token: str,
        other_token: str,
    ) -> None:
        self.world, self.http, self.account_id = world, http, account_id
        self.token, self.other_token = token, other_token

    async def get(self, path: str = "/activity", **params: object) -> httpx.Response:
        return await self.http.get(
            f"/v1/accounts/{self.account_id}{path}", headers=OPS, params=params
        )

    async def seqs(self, **params: object) -> list[int]:
        r = await self.get(**params)
        assert r.status_code == 200, r.text
        return [e["seq"] for e in r.json()["entries"]]

    async def all_pages(self, **params: object) -> tuple[list[int], list[int]]:
        """(every seq across the pages, each page's size)."""
        seqs: list[int] = []
        sizes: list[int] = []
        cursor = None
        while True:
            extra = {"cursor": cursor} if cursor else {}
            r = await self.get(**params, **extra)
            assert r.status_code == 200, r.text
            body = r.json()
            seqs += [e["seq"] for e in body["entries"]]
            sizes.append(len(body["entries"]))
            cursor = body["next_cursor"]
            if cursor is None:
                return seqs, sizes


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[Seeded]:
    async with ledger_world(activity_page_max=PAGE_MAX) as world:
        store, pool = world.store, world.pool
        account_id, other = "seeded-activity", "seeded-other"
        for a in (account_id, other):
            await registry.create_account(store, pool, a, RateCard.parse(RATE_CARD))
        rows, balance = [], 0
        for seq, (at, item, amount) in enumerate(SEEDED, start=1):
            balance += amount
            rows.append((account_id, seq, item, amount, balance, f"req-{seq}", us(at), ""))
        await world.conn.copy_records_to_table("ledger_entries", records=rows)
        token = await registry.issue_customer_token(store, pool, account_id, "dash")
        other_token = await registry.issue_customer_token(store, pool, other, "dash")
        gateway = GatewayProcess(world.settings)
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
                yield Seeded(world, http, account_id, token, other_token)
        finally:
            gateway.stop()


def desc(*seqs: int) -> list[int]:
    return sorted(seqs, reverse=True)


async def test_date_range_is_inclusive_whole_utc_days(seeded: Seeded) -> None:
    assert await seeded.seqs(**{"from": "2026-03-01", "to": "2026-03-31"}) == desc(2, 3, 4, 5)
    assert await seeded.seqs(to="2026-02-28") == [1]
    assert await seeded.seqs(**{"from": "2026-03-31", "to": "2026-04-01"}) == [6, 5]
    assert await seeded.seqs(**{"from": "2026-04-01", "to": "2026-04-01"}) == [6]
    assert await seeded.seqs(**{"from": "2026-05-01"}) == []
    assert await seeded.seqs(**{"from": "2026-04-02T23:00:00Z", "to": "9999-12-31"}) == [30]


async def test_rfc3339_bounds_are_inclusive_instants(seeded: Seeded) -> None:
    assert await seeded.seqs(
        **{"from": "2026-03-01T00:00:00.000001Z", "to": "2026-03-31T23:59:59.999999Z"}
    ) == desc(3, 4, 5)
    assert await seeded.seqs(
        **{"from": "2026-02-28T23:59:59.999999Z", "to": "2026-03-01T00:00:00Z"}
    ) == [2, 1]
    # Another offset names the same instant: 01:00+01:00 is midnight UTC.
    assert await seeded.seqs(
        **{"from": "2026-03-01T01:00:00+01:00", "to": "2026-03-01T01:00:00+01:00"}
    ) == [2]


async def test_show_debits_or_credits(seeded: Seeded) -> None:
    march = {"from": "2026-03-01", "to": "2026-03-31"}
    assert await seeded.seqs(show="credits", **march) == [4]
    assert await seeded.seqs(show="debits", **march) == desc(2, 3, 5)
    every = set(range(1, len(SEEDED) + 1))
    credits, _ = await seeded.all_pages(show="credits")
    debits, _ = await seeded.all_pages(show="debits")
    assert credits == desc(*CREDITS)
    assert debits == desc(*(every - CREDITS))


async def test_cursor_pages_cover_the_selection_exactly_once(seeded: Seeded) -> None:
    seqs, sizes = await seeded.all_pages(limit=7)
    assert seqs == desc(*range(1, len(SEEDED) + 1))
    assert sizes == [7, 7, 7, 7, 2]
    seqs, sizes = await seeded.all_pages(limit=3, show="debits", **{"from": "2026-04-02"})
    april_debits = [
        i + 1 for i, e in enumerate(SEEDED) if e[0] >= "2026-04-02" and e[1] != "funds_added"
    ]
    assert seqs == desc(*april_debits) and sizes[:-1] == [3] * (len(sizes) - 1)
    # Default page: at most activity_page_max entries.
    assert len(await seeded.seqs()) == PAGE_MAX


async def test_entry_fields(seeded: Seeded) -> None:
    r = await seeded.get(**{"from": "2026-03-01", "to": "2026-03-01"})
    body = r.json()
    assert body["account_id"] == seeded.account_id and body["next_cursor"] is None
    second = body["entries"][-1]
    assert second == {
        "seq": 2,
        "item": "sms_outbound",
        "label": "outgoing text message",
        "description": "Outgoing text message",
        "amount_micros": -7_500,
        "balance_after_micros": 100_000_000 - 7_500,
        "request_id": "req-2",
        "at": "2026-03-01T00:00:00.000000Z",
        "at_us": us("2026-03-01T00:00:00Z"),
        "detail": "",
    }


@pytest.mark.parametrize(
    "params, field",
    [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"to": "2026-02-30"}, "to"),
        ({"from": "2026-03-01T10:00:00"}, "from"),  # no time zone
        ({"from": "2026-04-01", "to": "2026-03-01"}, "from"),
        ({"show": "refunds"}, "show"),
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "0"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": str(PAGE_MAX + 1)}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"page": "2"}, "page"),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    seeded: Seeded, params: dict[str, str], field: str
) -> None:
    r = await seeded.get(**params)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    r = await seeded.get("/activity.csv", **params)
    assert r.status_code == 422, r.text


async def test_customer_sees_only_its_own_activity(seeded: Seeded) -> None:
    url = f"/v1/accounts/{seeded.account_id}/activity"
    own = await seeded.http.get(url, headers={"Authorization": f"Bearer {seeded.token}"})
    assert own.status_code == 200 and len(own.json()["entries"]) == PAGE_MAX
    other = await seeded.http.get(url, headers={"Authorization": f"Bearer {seeded.other_token}"})
    assert other.status_code == 403 and "entries" not in other.json()
    assert (await seeded.http.get(url)).status_code == 401
    missing = await seeded.http.get("/v1/accounts/no-such-account/activity", headers=OPS)
    assert missing.status_code == 404


async def test_csv_export_holds_the_same_selection(seeded: Seeded) -> None:
    march = {"from": "2026-03-01", "to": "2026-03-31"}
    r = await seeded.get("/activity.csv", **march)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(row["seq"]) for row in rows] == desc(2, 3, 4, 5)
    assert rows[-1]["amount_usd"] == "-0.007500" and rows[-1]["label"] == "outgoing text message"
    assert rows[-1]["at"] == "2026-03-01T00:00:00.000000Z"
    # All pages (the export pages internally past activity_page_max).
    everything = list(csv.DictReader(io.StringIO((await seeded.get("/activity.csv")).text)))
    assert [int(row["seq"]) for row in everything] == desc(*range(1, len(SEEDED) + 1))
    debits = list(
        csv.DictReader(io.StringIO((await seeded.get("/activity.csv", show="debits")).text))
    )
    assert {int(row["seq"]) for row in debits} == set(range(1, len(SEEDED) + 1)) - CREDITS
