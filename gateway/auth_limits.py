"""Failed authentication, rate limited per client address and per token prefix.

A bearer token that is neither the switch's nor ops' and matches no customer
token is a failure. More than `auth_failures_per_client_max` failures from one
address within `auth_failure_window_s`, or more than
`auth_failures_per_token_prefix_max` with tokens sharing their first
TOKEN_PREFIX_CHARS characters (one token guessed from many addresses), start a
block of `auth_failure_block_s`: meanwhile every customer or unknown token from
that address, or with that prefix, is answered 429 with Retry-After *before* it
is looked up, so a right guess would answer nothing different from a wrong one,
and guessing costs Redis nothing.

Never on the switch's path: the switch and ops tokens are compared (in
constant time, in-process) before the limiter is asked, so a neighbour behind
the same address, or someone failing with their tokens' first characters,
cannot lock out the money path. Those two tokens must therefore be long random
secrets; the limiter protects customer tokens and keeps the noise off Redis.

State is per process and in memory: a valid token costs one dict check while
anything is blocked, nothing otherwise. Each table keeps at most
`auth_failure_tracked_max` entries (the oldest go first). With N processes an
address gets up to N times its failures before every process refuses it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

from metering.settings import Settings

log = logging.getLogger(__name__)

# Characters of a presented token that key the per-prefix limit.
TOKEN_PREFIX_CHARS = 8
# Characters of a blocked prefix shown in the log (not the whole prefix).
PREFIX_SHOWN_CHARS = 3


@dataclasses.dataclass(slots=True)
class AuthFailureCounts:
    """Counters since the process started (for metrics)."""

    failed: int = 0  # tokens presented that are no one's
    refused: int = 0  # requests answered 429 (or sockets closed 4429) while blocked
    clients_blocked: int = 0  # blocks started for an address
    prefixes_blocked: int = 0  # blocks started for a token prefix


@dataclasses.dataclass(slots=True)
class FailureWindow:
    started: float
    failures: int = 0
    blocked_until: float = 0.0


class FailureTable:
    """Failure windows by key (an address, or a token prefix), bounded in size."""

    def __init__(self, failures_max: int, settings: Settings) -> None:
        self.failures_max = failures_max
        self.window_s = settings.auth_failure_window_s
        self.block_s = settings.auth_failure_block_s
        self.entries_max = settings.auth_failure_tracked_max
        self.windows: dict[str, FailureWindow] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def blocked_until(self, key: str, now: float) -> float:
        window = self.windows.get(key)
        return window.blocked_until if window is not None and window.blocked_until > now else 0.0

    def fail(self, key: str, now: float) -> tuple[float, bool]:
        """Count a failure; (blocked until, whether this failure started the block)."""
        window = self.windows.get(key)
        if window is None or (
            now - window.started >= self.window_s and window.blocked_until <= now
        ):
            if window is not None:
                del self.windows[key]  # re-inserted last: the oldest stay first
            elif len(self.windows) >= self.entries_max:
                del self.windows[next(iter(self.windows))]
            window = self.windows[key] = FailureWindow(now)
        window.failures += 1
        if window.blocked_until > now:
            return window.blocked_until, False
        if window.failures > self.failures_max:
            window.blocked_until = now + self.block_s
            return window.blocked_until, True
        return 0.0, False


class AuthFailureLimiter:
    """One per gateway process (built in the lifespan)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.window_s = settings.auth_failure_window_s
        self.clients = FailureTable(settings.auth_failures_per_client_max, settings)
        self.prefixes = FailureTable(settings.auth_failures_per_token_prefix_max, settings)
        self.counts = AuthFailureCounts()
        # Keys blocked now, so that with none the check is one falsy test.
        self._blocked_until: float = 0.0

    def retry_after_s(self, client: str, token: str) -> int | None:
        """Whole seconds until `client`, or `token`'s prefix, may try again; None
        when neither is blocked."""
        now = self.clock()
        if self._blocked_until <= now:
            return None
        until = max(
            self.clients.blocked_until(client, now),
            self.prefixes.blocked_until(token[:TOKEN_PREFIX_CHARS], now),
        )
        return math.ceil(until - now) if until > now else None

    def failed(self, client: str, token: str) -> int | None:
        """Count a failed authentication; the Retry-After seconds when it started
        (or fell in) a block, else None."""
        now = self.clock()
        self.counts.failed += 1
        prefix = token[:TOKEN_PREFIX_CHARS]
        client_until, client_new = self.clients.fail(client, now)
        prefix_until, prefix_new = self.prefixes.fail(prefix, now)
        if client_new:
            self.counts.clients_blocked += 1
            log.warning(
                "auth: more than %d failed authentications from %s within %.0f s: "
                "refusing its tokens for %.0f s",
                self.clients.failures_max,
                client,
                self.window_s,
                self.clients.block_s,
            )
        if prefix_new:
            self.counts.prefixes_blocked += 1
            log.warning(
                "auth: more than %d failed authentications with tokens starting %r... "
                "within %.0f s: refusing such tokens for %.0f s",
                self.prefixes.failures_max,
                prefix[:PREFIX_SHOWN_CHARS],
                self.window_s,
                self.prefixes.block_s,
            )
        until = max(client_until, prefix_until)
        if until <= now:
            return None
        self._blocked_until = max(self._blocked_until, until)
        return math.ceil(until - now)

    def note_refused(self) -> None:
        self.counts.refused += 1
