"""Lua scripts as files, loaded once and called by SHA.

Each `.lua` file in `metering/lua/` is prefixed with `_lib.lua` (shared pricing,
rounding, ledger and publish helpers) and becomes one `LuaScript`. A call runs
EVALSHA; on NOSCRIPT (a restarted or failed-over Redis) it loads the script and
retries once.

A call made with the store's own client goes through the store's
`ScriptPipeline` (metering/pipelining.py) when it has one: the calls of one
loop tick share one write to Redis. Called with any other client (a test's
recording wrapper, a tool's), a script runs on that client, one call at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from metering.metrics import METRICS

if TYPE_CHECKING:
    from metering.pipelining import ScriptPipeline

LIB_NAME = "_lib.lua"


class LuaScript:
    __slots__ = ("name", "source", "sha", "pipeline", "timed", "label")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.pipeline: ScriptPipeline | None = None
        self.timed = True
        # Its key in metering_redis_script_duration_seconds.
        self.label = (name,)

    async def __call__(self, redis: Any, keys: list[str], args: list[Any]) -> Any:
        pipeline = self.pipeline
        if pipeline is not None and redis is pipeline.client:
            # The pipeline records the round trip (metering/pipelining.py).
            return await pipeline.run(self, keys, args)
        if not self.timed:
            return await self.call_one(redis, keys, args)
        # The round trip as the caller sees it, failures included (metering/metrics.py).
        started = time.perf_counter()
        try:
            return await self.call_one(redis, keys, args)
        finally:
            METRICS.script_calls.observe(self.label, time.perf_counter() - started)

    async def run_many(self, redis: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """This script once per (keys, args), all written at once; the answers in
        order, each an answer or that call's exception (nothing is raised)."""
        pipeline = self.pipeline
        if pipeline is not None and redis is pipeline.client:
            return await pipeline.run_many(self, calls)
        return list(
            await asyncio.gather(
                *(self.call_one(redis, keys, args) for keys, args in calls),
                return_exceptions=True,
            )
        )

    async def call_one(self, redis: Any, keys: list[str], args: list[Any]) -> Any:
        """This call alone, on `redis` (a redis-py client)."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """All scripts of the service, by file name without `.lua`."""

    def __init__(self) -> None:
        folder = resources.files("metering") / "lua"
        lib = (folder / LIB_NAME).read_text()
        self._by_name: dict[str, LuaScript] = {}
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".lua") and entry.name != LIB_NAME:
                name = entry.name[: -len(".lua")]
                self._by_name[name] = LuaScript(name, lib + "\n" + entry.read_text())
        self.debit = self._by_name["debit"]
        self.credit = self._by_name["credit"]
        self.create_account = self._by_name["create_account"]
        self.reserve = self._by_name["reserve"]
        self.extend = self._by_name["extend"]
        self.commit = self._by_name["commit"]
        self.release = self._by_name["release"]
        self.expire_call = self._by_name["expire_call"]

    def __getitem__(self, name: str) -> LuaScript:
        return self._by_name[name]

    def all(self) -> list[LuaScript]:
        return list(self._by_name.values())

    def use_timing(self, on: bool) -> None:
        """Record each call's round trip in METRICS (the default) or not."""
        for script in self._by_name.values():
            script.timed = on

    def use_pipeline(self, pipeline: ScriptPipeline | None) -> None:
        """Send the calls made with `pipeline.client` through `pipeline`."""
        for script in self._by_name.values():
            script.pipeline = pipeline

    async def load(self, redis: Any) -> None:
        """SCRIPT LOAD each script (on every primary of a cluster), once at start-up."""
        for script in self._by_name.values():
            sha = await redis.script_load(script.source)
            if isinstance(sha, dict):  # a cluster answers per node
                shas = set(sha.values())
            else:
                shas = {sha}
            assert shas == {script.sha}, f"{script.name}: Redis computed another SHA"
