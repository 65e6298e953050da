"""The phone numbers an account holds, as the live store sees them: each held
number with its status, 'active' or 'suspended'. Calls and texts that name a
number read this in their script (lua/_lib.lua number_refusal); purchases and
renewals write it in the same script that charges them. The durable inventory,
with bought-at and renewal dates, is metering/numbers/inventory.py."""

from __future__ import annotations

from metering.store import Store

ACTIVE, SUSPENDED = "active", "suspended"


async def held_numbers(store: Store, account_id: str) -> dict[str, str]:
    """number -> status of every number the account holds."""
    held: dict[str, str] = await store.redis.hgetall(store.account_keys(account_id).numbers)
    return held


async def change_status(
    store: Store, account_id: str, number: str, action: str, expected: str = ""
) -> tuple[bool, str]:
    """'suspend' or 'release' a held number (only if its status is `expected`,
    when given). Returns (changed, the status before, '' when not held)."""
    keys = store.account_keys(account_id)
    result = await store.scripts["number_status"](
        store.redis, [keys.numbers], [number, action, expected]
    )
    return result[0] == "ok", str(result[1])
