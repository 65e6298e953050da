"""The live hub: one Redis pub/sub subscription per gateway process, fanned out
to this process's own websockets.

Every balance-changing script PUBLISHes one JSON per change on
`settings.live_channel`. The hub reads them on a single connection and hands
each to the sockets that watch the account (a customer dashboard) or every
account (an ops page). Handing over never waits: each socket has its own
pending map, coalesced to the latest frame per account, drained by the socket's
own sender task. A slow socket therefore skips intermediate balances, a stuck
one is closed by its sender, and neither delays the debit path (which only
PUBLISHes) nor the other sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from metering.burn import BurnRates, burn_rates
from metering.ledger.customer_tokens import TOKEN_REVOKED_EVENT
from metering.metrics import METRICS
from metering.pipelining import ChannelReader, subscribe
from metering.settings import Settings
from metering.store import Store

log = logging.getLogger(__name__)

# Close codes a live socket can get (also listed in the OpenAPI document).
CLOSE_UNAUTHORIZED = 4401  # no token, or an unknown one
CLOSE_FORBIDDEN = 4403  # the token may not watch this account / the ops channel
CLOSE_UNKNOWN_ACCOUNT = 4404
CLOSE_TOO_SLOW = 4408  # a send stayed stuck for live_send_timeout_s, or too far behind
# A subscription silent this long is asked for a PING (as redis-py's health check did).
HEALTH_CHECK_S = 30.0
CLOSE_RESUBSCRIBE = 1012  # the hub lost Redis: reconnect for a fresh snapshot
CLOSE_TRY_LATER = 1013  # socket limit of this process reached, or Redis unavailable
CLOSE_TOO_MANY = 4429  # the token or its account holds its most sockets, or auth is blocked

CLOSE_CODES: dict[int, str] = {
    CLOSE_UNAUTHORIZED: "unauthorized: missing or invalid token",
    CLOSE_FORBIDDEN: "forbidden: this token may not watch this channel",
    CLOSE_UNKNOWN_ACCOUNT: "unknown account",
    CLOSE_TOO_SLOW: "too slow: the client did not read its updates",
    CLOSE_RESUBSCRIBE: "live feed interrupted: reconnect for a fresh snapshot",
    CLOSE_TRY_LATER: "try again later",
    CLOSE_TOO_MANY: "too many: sockets for this token or account (close one), or failed "
    "authentications from this address (retry later)",
}


class SocketRefused(Exception):
    """A socket the hub will not hold, with the close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclasses.dataclass(slots=True)
class LiveSocketCounts:
    """Sockets refused since the process started (for metrics)."""

    refused_per_token: int = 0
    refused_per_account: int = 0
    refused_full: int = 0


class Subscriber:
    """One socket's view of the feed: pending frames keyed by account, the
    latest per account winning, and a wake-up for its sender task."""

    __slots__ = (
        "account_id",
        "pending",
        "wake",
        "floor_seq",
        "close_code",
        "pending_max",
        "token_id",
    )

    def __init__(
        self, account_id: str | None, pending_max: int, token_id: str | None = None
    ) -> None:
        self.account_id = account_id  # None: the ops channel, every account
        # The customer token's id (its SHA-256) the socket counts against; None: ops.
        self.token_id = token_id
        # account -> (seq, payload): a pre-encoded frame for an account socket,
        # a row for the ops socket's next batch.
        self.pending: dict[str, tuple[int, Any]] = {}
        self.wake = asyncio.Event()
        # Frames older than the snapshot the socket got are dropped (seq only
        # grows; reserve/extend/release keep it, so equal seq still passes and
        # replays history ending at the snapshot's state).
        self.floor_seq: dict[str, int] = {}
        self.close_code: int | None = None
        self.pending_max = pending_max

    def offer(self, account_id: str, seq: int | None, payload: Any, key: str | None = None) -> None:
        """Queue a frame without waiting (called by the hub for every change).
        Frames coalesce by `key` (the account for balance changes); seq None
        (a message that is not a balance change) skips the snapshot check."""
        if self.close_code is not None:
            return
        if seq is not None and seq < self.floor_seq.get(account_id, -1):
            return
        slot = key or account_id
        # Re-inserted at the end, so frames leave in the order they came: a
        # balance and an account-state frame of one account never swap places.
        self.pending.pop(slot, None)
        self.pending[slot] = (-1 if seq is None else seq, payload)
        if len(self.pending) > self.pending_max:
            self.close(CLOSE_TOO_SLOW)
        self.wake.set()

    def set_floor(self, account_id: str, seq: int) -> None:
        """The socket was sent the account at `seq`: drop older pending frames."""
        self.floor_seq[account_id] = seq
        queued = self.pending.get(account_id)
        if queued is not None and queued[0] < seq:
            del self.pending[account_id]

    def take(self, count_max: int) -> list[Any]:
        """Up to count_max pending payloads, oldest account first."""
        if len(self.pending) <= count_max:
            frames = [payload for _, payload in self.pending.values()]
            self.pending.clear()
        else:
            keys = list(self.pending)[:count_max]
            frames = [self.pending.pop(k)[1] for k in keys]
        if not self.pending:
            self.wake.clear()
        return frames

    def close(self, code: int) -> None:
        """Ask the sender to close the socket with `code`."""
        if self.close_code is None:
            self.close_code = code
            if code == CLOSE_TOO_SLOW:
                METRICS.live_slow_clients_dropped.inc()
        self.pending.clear()
        self.wake.set()


class LiveHub:
    """The process's subscription and its subscribers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_account: dict[str, set[Subscriber]] = {}
        self.ops: set[Subscriber] = set()
        self.count = 0
        # Customer sockets: in all, by token and by account (ops sockets are not limited
        # per token or account; they may use the room customers leave them).
        self.customer_count = 0
        self.by_token_count: dict[str, int] = {}
        self.by_account_count: dict[str, int] = {}
        self.refusals = LiveSocketCounts()
        self.messages = 0
        # Burn rates for ops sockets: read from Redis at most once per refresh
        # period, however many ops pages this process serves.
        self._burn: BurnRates | None = None
        self._burn_lock = asyncio.Lock()
        self.subscribed = asyncio.Event()
        self._subscriber: ChannelReader | None = None

    # ---- subscribers -------------------------------------------------------

    def add(self, account_id: str | None, token_id: str | None = None) -> Subscriber:
        """Register a socket watching `account_id` (None: every account, ops) for
        the customer token `token_id` (None: ops). Raises SocketRefused past a limit:
        the process's (customers stop live_ops_sockets_reserved short of it), the
        token's, or its account's."""
        s = self.settings
        if token_id is not None:
            assert account_id is not None, "a customer socket watches one account"
            self._check_customer_limits(account_id, token_id)
        elif self.count >= s.live_sockets_max:
            self.refusals.refused_full += 1
            raise SocketRefused(CLOSE_TRY_LATER, "this gateway holds its most sockets")
        sub = Subscriber(account_id, s.live_pending_accounts_max, token_id)
        if account_id is None:
            self.ops.add(sub)
        else:
            self.by_account.setdefault(account_id, set()).add(sub)
        if token_id is not None and account_id is not None:
            self.customer_count += 1
            self.by_token_count[token_id] = self.by_token_count.get(token_id, 0) + 1
            self.by_account_count[account_id] = self.by_account_count.get(account_id, 0) + 1
        self.count += 1
        return sub

    def _check_customer_limits(self, account_id: str, token_id: str) -> None:
        s = self.settings
        customers_max = s.live_sockets_max - s.live_ops_sockets_reserved
        if self.customer_count >= customers_max or self.count >= s.live_sockets_max:
            self.refusals.refused_full += 1
            raise SocketRefused(CLOSE_TRY_LATER, "this gateway holds its most sockets")
        if self.by_token_count.get(token_id, 0) >= s.live_sockets_per_token_max:
            self.refusals.refused_per_token += 1
            raise SocketRefused(
                CLOSE_TOO_MANY,
                f"this token holds {s.live_sockets_per_token_max} live sockets: close one",
            )
        if self.by_account_count.get(account_id, 0) >= s.live_sockets_per_account_max:
            self.refusals.refused_per_account += 1
            raise SocketRefused(
                CLOSE_TOO_MANY,
                f"this account holds {s.live_sockets_per_account_max} live sockets: close one",
            )

    def remove(self, sub: Subscriber) -> None:
        if sub.account_id is None:
            if sub in self.ops:
                self.ops.discard(sub)
                self.count -= 1
            return
        subs = self.by_account.get(sub.account_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self.count -= 1
            if not subs:
                del self.by_account[sub.account_id]
            if sub.token_id is not None:
                self.customer_count -= 1
                _decrement(self.by_token_count, sub.token_id)
                _decrement(self.by_account_count, sub.account_id)

    def close_token(self, account_id: str, token_id: str) -> None:
        """Close the sockets of a revoked customer token (as unauthorized)."""
        for sub in self.by_account.get(account_id, ()):
            if sub.token_id == token_id:
                sub.close(CLOSE_UNAUTHORIZED)

    def close_all(self, code: int) -> None:
        for subs in list(self.by_account.values()):
            for sub in subs:
                sub.close(code)
        for sub in self.ops:
            sub.close(code)

    # ---- the feed ----------------------------------------------------------

    def dispatch(self, data: bytes | str) -> None:
        """Hand one published change to every interested socket; never waits."""
        if self.count == 0:
            # Nobody here to tell: skip the parse (every debit of every gateway
            # lands here). Burn-rate counters only matter while an ops page watches.
            self.messages += 1
            return
        try:
            change = orjson.loads(data)
            account_id = change["account_id"]
            # Other publishers (e.g. a recharge outcome) may send messages without
            # a balance: they get their own coalescing slot, so they never replace
            # a pending balance, and no snapshot check.
            is_balance = "balance_micros" in change
            seq = int(change.get("seq", 0)) if is_balance else None
            key = account_id if is_balance else f"{account_id}#{change.get('event', '')}"
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed live message: %r", data[:200])
            return
        self.messages += 1
        if not is_balance and change.get("event") == TOKEN_REVOKED_EVENT:
            self.close_token(account_id, str(change.get("token", "")))
            return
        subs = self.by_account.get(account_id)
        if subs:
            # Encoded once, however many dashboards watch the account.
            text = orjson.dumps({"type": "update", **change}).decode()
            for sub in subs:
                sub.offer(account_id, seq, text, key)
        for sub in self.ops:
            sub.offer(account_id, seq, change, key)

    async def burn_rates(self, store: Store) -> BurnRates:
        """Every account's burn rate (metering/burn.py), shared by this process's
        ops sockets: fresh within half a refresh period."""
        async with self._burn_lock:
            now_us = time.time_ns() // 1_000
            fresh_us = int(self.settings.live_ops_burn_refresh_s * 500_000)
            if self._burn is None or now_us - self._burn.at_us > fresh_us:
                self._burn = await burn_rates(store, now_us)
            return self._burn

    async def _connect(self) -> None:
        s = self.settings
        # Plain pub/sub works on Redis Cluster too: a PUBLISH reaches every node,
        # so one connection to any node (redis_url) hears all changes. Read with
        # hiredis, every message handed to dispatch as parsed (metering/pipelining.py):
        # redis-py's get_message cost 6% of a process per debit, 24% under batches.
        self._subscriber = await subscribe(
            s.redis_url,
            s.live_channel,
            self.dispatch,
            s.redis_timeout_s,
            f"metering-live-hub-{os.getpid()}",
        )
        self.subscribed.set()

    async def _disconnect(self) -> None:
        self.subscribed.clear()
        if self._subscriber is not None:
            self._subscriber.close()
        self._subscriber = None

    async def _watch(self, stop: asyncio.Event) -> None:
        """Until stop, or raise when the subscription is lost or Redis stops
        answering (a PING after HEALTH_CHECK_S without a message)."""
        subscriber = self._subscriber
        assert subscriber is not None
        stopping = asyncio.ensure_future(stop.wait())
        losing = asyncio.ensure_future(subscriber.lost.wait())
        try:
            while not stop.is_set():
                await asyncio.wait(
                    {stopping, losing}, timeout=HEALTH_CHECK_S, return_when="FIRST_COMPLETED"
                )
                if subscriber.lost.is_set():
                    raise RedisConnectionError(
                        f"subscription lost ({subscriber.error or 'closed'})"
                    )
                idle_s = asyncio.get_running_loop().time() - subscriber.last_data_at
                if not stop.is_set() and idle_s >= HEALTH_CHECK_S:
                    subscriber.ping()
                    await asyncio.wait({stopping, losing}, timeout=self.settings.redis_timeout_s)
                    if subscriber.last_data_at <= asyncio.get_running_loop().time() - idle_s:
                        raise RedisConnectionError("no answer to PING on the subscription")
        finally:
            stopping.cancel()
            losing.cancel()

    async def start(self) -> None:
        """Subscribe before the process serves, so no change is missed by a
        socket that connects as soon as the gateway answers."""
        await self._connect()

    async def run(self, stop: asyncio.Event) -> None:
        """Read the channel until stop; on a Redis error, drop every socket (they
        reconnect for a fresh snapshot, since changes were missed) and resubscribe."""
        while not stop.is_set():
            try:
                if self._subscriber is None:
                    await self._connect()
                await self._watch(stop)
            except Exception as exc:  # noqa: BLE001 - the feed must outlive any one failure
                if isinstance(exc, RedisError | OSError | TimeoutError):
                    log.warning("live subscription lost (%s); resubscribing", exc)
                else:
                    log.exception("live feed failed; resubscribing")
                self.close_all(CLOSE_RESUBSCRIBE)
                await self._disconnect()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.live_reconnect_delay_s)
        await self._disconnect()
        self.close_all(CLOSE_RESUBSCRIBE)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
