"""Reading an account's entries back from its shard's ledger stream (tests only)."""

from __future__ import annotations

from metering.keys import AccountKeys
from metering.ledger_entries import LedgerEntry
from metering.store import Store


async def stream_entries(store: Store, account_id: str) -> list[LedgerEntry]:
    keys = AccountKeys(account_id, store.settings.shard_count)
    raw = await store.redis.xrange(keys.shard.ledger, "-", "+")
    return [
        LedgerEntry.from_stream(fields) for _, fields in raw if fields["account_id"] == account_id
    ]


def assert_gapless_running_sum(entries: list[LedgerEntry], opening_micros: int = 0) -> int:
    """seq 1..n without gaps and each balance_after equal to the running sum; returns the sum."""
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    running = opening_micros
    for e in entries:
        running += e.amount_micros
        assert e.balance_after_micros == running, e
        assert running >= 0
    return running


async def account_dump(store: Store, account_id: str) -> dict[str, object]:
    """Every key of the account (and its shard's stream lengths), for before/after checks."""
    keys = AccountKeys(account_id, store.settings.shard_count)
    dump: dict[str, object] = {}
    async for key in store.redis.scan_iter(match=f"m:{keys.shard.tag}:*{account_id}*", count=1000):
        kind = await store.redis.type(key)
        if kind == "hash":
            dump[key] = await store.redis.hgetall(key)
        elif kind == "set":
            dump[key] = sorted(await store.redis.smembers(key))
        else:
            dump[key] = await store.redis.get(key)
    dump["ledger_len"] = await store.redis.xlen(keys.shard.ledger)
    dump["recharge_len"] = await store.redis.xlen(keys.shard.recharge)
    dump["expiry"] = await store.redis.zrange(keys.shard.expiry, 0, -1, withscores=True)
    return dump
