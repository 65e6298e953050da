"""Reading shard streams through a Redis consumer group, crash-safe. The ledger
writer, the recharge worker, the number scheduler and the notifier all read
their streams this way:

- a consumer keeps a stable name, so a restarted process re-reads the entries
  it took but never acknowledged (`read_own_pending`);
- an entry a dead consumer left pending for `stream_claim_idle_ms` (the ledger
  writer: `ledger_claim_idle_ms`) is claimed by another (XAUTOCLAIM);
- an entry is acknowledged and deleted only after its consumer recorded it
  durably (`done`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from metering.keys import ShardKeys, all_shards
from metering.store import Store

Entry = tuple[str, str, dict[str, str]]  # (stream key, entry id, fields)
# An XAUTOCLAIM answer of a stream with nothing more to scan starts over here.
SCAN_DONE = "0-0"


async def ensure_groups(redis: Any, streams: list[str], group: str) -> None:
    """Create the group on each stream, reading from its start (idempotent)."""
    for stream in streams:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await redis.xgroup_create(stream, group, id="0", mkstream=True)


async def claim_idle(
    redis: Any, stream: str, group: str, consumer: str, idle_ms: int, count_max: int
) -> list[tuple[str, dict[str, str]]]:
    """Take over at most count_max entries of `stream` pending longer than idle_ms
    under any consumer, as (entry id, fields). An entry trimmed while pending comes
    back with empty fields: the caller acknowledges it."""
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


@dataclasses.dataclass(slots=True)
class ShardStreamReader:
    store: Store
    stream_of: Callable[[ShardKeys], str]
    group: str
    consumer: str
    _last_claim: float = 0.0

    def streams(self) -> list[str]:
        return [self.stream_of(shard) for shard in all_shards(self.store.settings.shard_count)]

    async def ensure_groups(self) -> None:
        """Create the consumer group on every shard's stream (idempotent)."""
        await ensure_groups(self.store.redis, self.streams(), self.group)

    async def read_own_pending(self, count: int) -> list[Entry]:
        """Entries this consumer took and never acknowledged (a previous life of the
        process, or a pass that failed half-way), at most count per shard. An entry
        trimmed meanwhile comes with empty fields: acknowledge it with `done`."""
        streams = self.streams()
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xreadgroup(self.group, self.consumer, {stream: "0"}, count=count)
            answers = await pipe.execute()
        out: list[Entry] = []
        for stream, answer in zip(streams, answers, strict=True):
            for _stream, entries in answer or []:
                out += [(stream, entry_id, fields or {}) for entry_id, fields in entries]
        return out

    async def read(self, count: int) -> list[Entry]:
        """New entries of every shard (at most count per shard), plus entries another
        consumer left pending too long (checked a few times per idle period)."""
        streams = self.streams()
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count)
            answers = await pipe.execute(raise_on_error=False)
        out: list[Entry] = []
        missing_group = False
        for stream, answer in zip(streams, answers, strict=True):
            if isinstance(answer, ResponseError):
                missing_group = True  # NOGROUP: Redis lost its data; recreate below
                continue
            for _stream, entries in answer or []:
                out += [(stream, entry_id, fields) for entry_id, fields in entries if fields]
        if missing_group:
            await self.ensure_groups()
        idle_ms = self.store.settings.stream_claim_idle_ms
        if time.monotonic() - self._last_claim > idle_ms / 4000:
            self._last_claim = time.monotonic()
            out += await self._claim_idle(streams, idle_ms, count)
        return out

    async def _claim_idle(self, streams: list[str], idle_ms: int, count: int) -> list[Entry]:
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xautoclaim(stream, self.group, self.consumer, idle_ms, "0-0", count=count)
            answers = await pipe.execute(raise_on_error=False)
        out: list[Entry] = []
        for stream, answer in zip(streams, answers, strict=True):
            if isinstance(answer, ResponseError) or not answer:
                continue
            out += [(stream, entry_id, fields) for entry_id, fields in answer[1] if fields]
        return out

    async def done(self, entries: list[Entry]) -> None:
        """Acknowledge and delete entries that are recorded durably."""
        if not entries:
            return
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for stream, entry_id, _fields in entries:
                pipe.xack(stream, self.group, entry_id)
                pipe.xdel(stream, entry_id)
            await pipe.execute()
