"""Reading one kind of shard stream (`m:{sNNN}:numbers`, `m:{sNNN}:events`)
through a consumer group, so several workers share the entries and each entry
goes to one of them. An entry is acknowledged and deleted only after its
consumer recorded it durably; an entry a dead consumer left pending for
`stream_claim_idle_ms` is claimed by another (XAUTOCLAIM)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

from redis.exceptions import ResponseError

from metering.keys import ShardKeys, all_shards
from metering.store import Store

Entry = tuple[str, str, dict[str, str]]  # (stream key, entry id, fields)


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
        for stream in self.streams():
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self.store.redis.xgroup_create(stream, self.group, id="0", mkstream=True)

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
