"""The loop of a polling worker: work rounds until stopped, pausing when a round
found nothing to do; a failed round is logged and the next one retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def poll(
    stop: asyncio.Event, work: Callable[[], Awaitable[int]], interval_s: float, name: str
) -> None:
    """Run work() until stop is set; work returns how much it did (0: pause)."""
    while not stop.is_set():
        done = 0
        try:
            done = await work()
        except Exception:
            log.exception("%s round failed; retrying", name)
        if not done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
