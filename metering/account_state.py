"""Telling open pages that an account's recharge state or card changed.

Balance changes are published by the Lua script that makes them. What else a
page shows (automatic recharge on or off, pending since when, the last failure,
the card on file) changes outside those scripts, so whoever changes it calls
publish_account_state afterwards: one script reads the account and publishes
it as a frame `{"account_id", "event": "account", "seq", "at_us", "recharge":
{...}, "card": {...} | null}` (the shapes of GET /v1/accounts/{id}).
"""

from __future__ import annotations

from metering.store import Store


async def publish_account_state(store: Store, account_id: str) -> bool:
    """Publish the account's recharge state and card; False for an unknown account."""
    keys = store.account_keys(account_id)
    result = await store.scripts["publish_account"](
        store.redis, [keys.account], [store.settings.live_channel, account_id]
    )
    return bool(result == 1)
