"""The scripts' side of phone numbers and low-balance alerts: a purchase holds
the number, a suspended number refuses the calls and texts that name it, a
renewal makes it active again; and a balance crossing below the alert
threshold, or reaching zero, appends one event per crossing however many
debits run at once."""

from __future__ import annotations

import asyncio

import pytest

from devkit.testing import RATE_CARD
from metering import accounts, credits, debits, phone_numbers, reservations
from metering.errors import NumberSuspended, UnknownNumber
from metering.rate_card import RateCard
from metering.store import Store
from tests.conftest import new_account_id

NUMBER = "+15557770001"


async def funded_account(store: Store, micros: int) -> str:
    account = new_account_id("num")
    await accounts.create_account(store, account, RateCard.parse(RATE_CARD))
    await credits.add_funds(store, account, "start", micros, "ops_credit", "test")
    return account


async def events_of(store: Store, account: str) -> list[dict[str, str]]:
    stream = store.account_keys(account).shard.events
    return [f for _id, f in await store.redis.xrange(stream) if f["account_id"] == account]


async def test_suspended_number_refuses_calls_and_texts_naming_it(store: Store) -> None:
    account = await funded_account(store, 10_000_000)
    await debits.number_purchase(store, account, "p1", NUMBER)
    assert await phone_numbers.held_numbers(store, account) == {NUMBER: "active"}
    await debits.message(store, account, "m1", "inbound", NUMBER)
    await reservations.reserve(store, account, "c1", "inbound", NUMBER)

    changed, before = await phone_numbers.change_status(store, account, NUMBER, "suspend")
    assert (changed, before) == (True, "active")
    with pytest.raises(NumberSuspended):
        await debits.message(store, account, "m2", "inbound", NUMBER)
    with pytest.raises(NumberSuspended):
        await reservations.reserve(store, account, "c2", "inbound", NUMBER)
    with pytest.raises(UnknownNumber):
        await reservations.reserve(store, account, "c3", "inbound", "+15550000000")
    # Without a number the request goes on as before.
    await debits.message(store, account, "m3", "inbound")

    # A renewal (here the switch's) pays and makes the number active again.
    await debits.number_renewal(store, account, "r1", NUMBER)
    assert await phone_numbers.held_numbers(store, account) == {NUMBER: "active"}
    await reservations.reserve(store, account, "c4", "inbound", NUMBER)

    # Released: gone; the scheduler's renewal of it is refused and charges nothing.
    changed, _ = await phone_numbers.change_status(store, account, NUMBER, "release")
    assert changed
    before_balance = (await accounts.get_account(store, account)).balance_micros
    with pytest.raises(UnknownNumber):
        await debits.number_renewal(store, account, "auto-1", NUMBER, automatic=True)
    assert (await accounts.get_account(store, account)).balance_micros == before_balance


async def test_purchase_and_switch_renewal_are_told_to_the_scheduler(store: Store) -> None:
    account = await funded_account(store, 10_000_000)
    await debits.number_purchase(store, account, "p1", NUMBER, "switch")
    await debits.number_renewal(store, account, "r1", NUMBER)
    await debits.number_renewal(store, account, "r2", "+15550000009")  # not held: only charged
    stream = store.account_keys(account).shard.numbers
    mine = [f for _id, f in await store.redis.xrange(stream) if f["account_id"] == account]
    assert [(f["kind"], f["number"], f["renewal"]) for f in mine] == [
        ("purchase", NUMBER, "switch"),
        ("renewal", NUMBER, ""),
    ]
    assert mine[0]["renewal_micros"] == str(RATE_CARD["number_renewal_micros"])


async def test_low_balance_alert_once_per_crossing_under_concurrent_debits(store: Store) -> None:
    sms = RATE_CARD["sms_outbound_micros"]
    account = await funded_account(store, 200 * sms)
    await store.redis.hset(
        store.account_keys(account).account, "alert_low_balance_micros", 100 * sms
    )

    async def burst(prefix: str, n: int) -> None:
        await asyncio.gather(
            *(debits.message(store, account, f"{prefix}{i}", "outbound") for i in range(n))
        )

    await burst("a", 200)  # from 200 texts' worth to zero: one low, one depleted
    kinds = [e["type"] for e in await events_of(store, account)]
    assert kinds == ["balance.low", "balance.depleted"]
    # A credit above the threshold re-arms both; the next crossing alerts again.
    await credits.add_funds(store, account, "top-up", 150 * sms, "ops_credit", "test")
    await burst("b", 100)
    kinds = [e["type"] for e in await events_of(store, account)]
    assert kinds == ["balance.low", "balance.depleted", "balance.low"]
    low = (await events_of(store, account))[2]
    assert low["event_id"] == f"balance.low:{account}:{low['at_us']}"
