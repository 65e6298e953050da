"""No money moves in a restarted Redis before the ledger check has run on it.

Redis runs with the append-only file at fsync every second: a crash of its host
can bring it back without its last second of changes, while the ledger writer
had already committed some of them to Postgres. An account whose Redis seq is
then behind the ledger would reuse a seq on its next change. The ledger check
(metering/ledger/recovery.py) fast-forwards such accounts; this fence makes
sure it has run against the Redis a process talks to before that process uses
it.

Every new connection of a fenced client (one per process that moves money: the
gateway, the recharge worker, the sweeper) reads the server's run id (new at
every start) and `m:ledger_checked`, the run id the check last ran against.
Equal: the connection is used. Different: a process that can run the check
(it reaches Postgres) runs it once, shared by all its connections, and every
connection waits for it up to `wait_s`; a process that cannot refuses the
connection (a Redis ConnectionError, which its outage loop waits out) until
some other process has run it. The authorize path pays nothing for this: it
happens once per new connection, not per request.

If Postgres does not answer, the check cannot run: the fence then opens for
this Redis lifetime (the authorize path never depends on Postgres) and says so
in the log; run `python -m metering rebuild` once Postgres is back if Redis
may have lost data. A Redis Cluster is not fenced (its nodes restart one by
one, each with its own run id): there, run rebuild after a node lost data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from metering.keys import LEDGER_CHECKED_KEY

log = logging.getLogger(__name__)

# The check: True when it ran (and marked this Redis checked), False when
# Postgres did not answer. Any exception is a failure to retry on the next
# connection.
LedgerCheck = Callable[[], Awaitable[bool]]


def run_id_of(info: Any) -> str:
    """The run id in an INFO server answer (the raw text, as bytes or str, or
    redis-py's parsed dict)."""
    if isinstance(info, dict) and "run_id" in info:
        return str(info["run_id"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    raise RedisConnectionError("INFO server has no run_id")


class RestartFence:
    """The connect hook of one process's Redis client (see the module docstring)."""

    def __init__(self, check: LedgerCheck | None, wait_s: float) -> None:
        self.check = check
        self.wait_s = wait_s
        self._cleared: set[str] = set()
        self._running: dict[str, asyncio.Task[bool]] = {}

    async def on_connect(self, connection: Any) -> None:
        """redis-py's `redis_connect_func`: the usual handshake, then the fence."""
        await connection.on_connect()

        async def command(*args: Any) -> Any:
            await connection.send_command(*args)
            return await connection.read_response()

        await self.admit(command)

    async def admit(self, command: Callable[..., Awaitable[Any]]) -> None:
        """Let a new connection (that runs `command(*args)`) be used, or raise a
        Redis ConnectionError (see the module docstring)."""
        run_id = run_id_of(await command("INFO", "server"))
        if run_id in self._cleared:
            return
        checked = await command("GET", LEDGER_CHECKED_KEY)
        if isinstance(checked, bytes):
            checked = checked.decode()
        if checked == run_id:
            self._cleared.add(run_id)
            return
        if self.check is None:
            raise RedisConnectionError(
                f"Redis (run id {run_id[:12]}) has not been checked against the ledger "
                "since it started; waiting for a gateway, the recharge worker or "
                "`python -m metering rebuild` to check it"
            )
        task = self._running.get(run_id)
        if task is None:
            task = asyncio.create_task(self._run_check(run_id), name="ledger-check")
            self._running[run_id] = task
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.wait_s)
        except TimeoutError:
            raise RedisConnectionError(
                "Redis restarted; the ledger check is still running, retry"
            ) from None

    async def _run_check(self, run_id: str) -> bool:
        assert self.check is not None
        try:
            done = await self.check()
        except Exception as exc:
            self._running.pop(run_id, None)
            log.exception("the ledger check after a Redis start failed; retrying on next use")
            raise RedisConnectionError(f"the ledger check failed: {exc}") from exc
        if not done:
            log.warning(
                "Redis (run id %s) started and Postgres did not answer: serving without "
                "the ledger check; if Redis may have lost data, run `python -m metering "
                "rebuild` once Postgres is back",
                run_id[:12],
            )
        self._cleared.add(run_id)
        self._running.pop(run_id, None)
        return done
