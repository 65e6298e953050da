"""A waiting automatic recharge that money added meanwhile made unnecessary.

After a decline an episode waits recharge_decline_retry_s (hours) for its next
attempt, and its pending mark stays set. When a credit (pay now, an ops credit)
lifts the available balance back to the threshold or above, the episode is made
due now: the worker then ends it without a charge ("balance back above the
threshold"), clears the mark and tells open pages, instead of leaving them
saying a recharge is pending for hours. A card registered meanwhile does the
same (metering/payments/cards.py).
"""

from __future__ import annotations

from typing import Any

from metering.payments.cards import SQL_RETRY_EPISODE_NOW
from metering.store import Store


async def recheck_when_lifted(
    store: Store, db: Any, account_id: str, available_micros: int
) -> bool:
    """Make the open episode due now if this credit left the account at or above
    its threshold while a recharge is pending; returns whether it did."""
    keys = store.account_keys(account_id)
    pending, threshold = await store.redis.hmget(
        keys.account, "recharge_pending_since_us", "recharge_threshold_micros"
    )
    if not pending or available_micros < int(threshold or 0):
        return False
    await db.execute(SQL_RETRY_EPISODE_NOW, account_id)
    return True
