"""An account's pending automatic-recharge mark (`recharge_pending_since_us` in its
hash): set by the scripts when a recharge is requested, cleared by the credit
that settles its episode, or here when the episode ends without one."""

from __future__ import annotations

from metering.errors import raise_refusal
from metering.store import Store


async def clear_pending_mark(
    store: Store, account_id: str, episode_us: int, failure_text: str = ""
) -> bool:
    """End an episode without a credit: clear the pending mark if it is still this
    episode's (settle_recharge.lua), keeping failure_text as the last failure.
    Returns whether this episode's mark was removed."""
    keys = store.account_keys(account_id)
    result = await store.scripts["settle_recharge"](
        store.redis, [keys.account], [episode_us, failure_text]
    )
    raise_refusal(result, account_id)
    return bool(result[1] == 1)
