"""Reading the shard streams through a Redis consumer group, crash-safe.

The ledger writer and the recharge worker both read this way:

- a consumer keeps a stable name, so a restarted process re-reads the entries it
  took but never acknowledged (XREADGROUP from id 0);
- entries another consumer left pending for longer than an idle time are taken
  over with XAUTOCLAIM, so a consumer that never comes back strands nothing;
- an entry is acknowledged only once its effect is durable (the caller's part).
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

# An XAUTOCLAIM answer of a stream with nothing more to scan starts over here.
SCAN_DONE = "0-0"


async def ensure_groups(redis: Any, streams: list[str], group: str) -> None:
    """Create the group on each stream, reading from its start (idempotent)."""
    for stream in streams:
        try:
            await redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def claim_idle(
    redis: Any, stream: str, group: str, consumer: str, idle_ms: int, count_max: int
) -> list[tuple[str, dict[str, str]]]:
    """Take over at most count_max entries of `stream` pending longer than idle_ms
    under any consumer; returns them as (entry id, fields). An entry trimmed while
    pending comes back with empty fields: the caller acknowledges it."""
    taken: list[tuple[str, dict[str, str]]] = []
    start = SCAN_DONE
    while len(taken) < count_max:
        answer = await redis.xautoclaim(
            stream, group, consumer, idle_ms, start_id=start, count=count_max - len(taken)
        )
        start, messages = answer[0], answer[1]
        taken.extend((entry_id, fields or {}) for entry_id, fields in messages)
        if start == SCAN_DONE:
            break
    return taken
