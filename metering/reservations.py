"""Calls: reserve at set-up, extend before the grant runs out, commit at hang-up,
release when the call never connected (credit control, RFC 4006 style).

The grant sizing, charge rule and expiry policy are written in the scripts'
headers (lua/reserve.lua, lua/commit.lua, lua/expire_call.lua) and in
the README.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from metering import fields
from metering.burn import spend_key, spend_ttl_s
from metering.debits import DIRECTIONS
from metering.errors import InvalidRequest, raise_refusal
from metering.metrics import METRICS
from metering.store import Store

Answer = TypeVar("Answer", "Grant", "CallCharge", "Release")
# metering_reservations_total{event}: each answered once, replays not counted.
OPENED, EXTENDED, COMMITTED, RELEASED = ("opened",), ("extended",), ("committed",), ("released",)


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    call_id: str
    granted_seconds: int
    max_seconds: int
    validity_seconds: int
    final: bool
    reserved_for_call_micros: int
    balance_micros: int
    reserved_micros: int
    total_granted_seconds: int
    replayed: bool

    @classmethod
    def from_answer(cls, call_id: str, r: list[Any], total_granted_seconds: int) -> Grant:
        """A reserve.lua or extend.lua answer: {'ok', replayed, granted_s, max_s,
        validity_s, final, held_micros, balance_micros, reserved_micros, ...}."""
        return cls(
            call_id,
            int(r[2]),
            int(r[3]),
            int(r[4]),
            int(r[5]) == 1,
            int(r[6]),
            int(r[7]),
            int(r[8]),
            total_granted_seconds,
            r[1] == 1,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "granted_seconds": self.granted_seconds,
            "total_granted_seconds": self.total_granted_seconds,
            "max_seconds": self.max_seconds,
            "validity_seconds": self.validity_seconds,
            "final": self.final,
            "call_reserved_micros": self.reserved_for_call_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class CallCharge:
    call_id: str
    duration_seconds: int
    billed_seconds: int
    charged_micros: int
    balance_micros: int
    reserved_micros: int
    seq: int
    capped: bool
    replayed: bool
    # A late commit of an expired call: how the balance moved to correct the
    # expiry's charge (a refund is positive); 0 for a commit in time.
    correction_micros: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "duration_seconds": self.duration_seconds,
            "billed_seconds": self.billed_seconds,
            "charged_micros": self.charged_micros,
            "capped": self.capped,
            "correction_micros": self.correction_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
            "seq": self.seq,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    call_id: str
    released_micros: int
    balance_micros: int
    reserved_micros: int
    replayed: bool
    # A late release of an expired call: the expiry's charge refunded (else 0).
    correction_micros: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "charged_micros": 0,
            "correction_micros": self.correction_micros,
            "released_micros": self.released_micros,
            "balance_micros": self.balance_micros,
            "reserved_micros": self.reserved_micros,
            "available_micros": self.balance_micros - self.reserved_micros,
        }


async def reserve(
    store: Store, account_id: str, call_id: str, direction: str, number: str | None = None
) -> Grant:
    """Open a call and grant its first chunk of seconds. Naming the account's number
    (called, or calling) refuses the call while that number is suspended."""
    fields.account_id(account_id)
    fields.request_id(call_id, "call_id")
    fields.choice(direction, "direction", DIRECTIONS)
    if number is not None:
        fields.phone_number(number)
    keys = store.account_keys(account_id)
    s = store.settings
    r = await store.scripts.reserve(
        store.redis,
        [*keys.call_keys(call_id), keys.shard.recharge, keys.numbers, keys.shard.ledger],
        [
            account_id,
            call_id,
            direction,
            s.call_grant_s,
            s.call_validity_grace_s,
            s.call_duration_s_max,
            s.live_channel,
            number or "",
            s.ledger_backlog_max,
        ],
    )
    raise_refusal(r, account_id, f"call {call_id}")
    return _counted(OPENED, Grant.from_answer(call_id, r, total_granted_seconds=int(r[2])))


async def extend(store: Store, account_id: str, call_id: str, extend_id: str | None) -> Grant:
    """Grant another chunk to an open call. With an extend_id a retry returns the
    first answer; without one every request grants again (it only reserves, so a
    duplicate costs nothing once the call is committed)."""
    fields.account_id(account_id)
    fields.request_id(call_id, "call_id")
    if extend_id is not None:
        fields.request_id(extend_id, "extend_id")
    keys = store.account_keys(account_id)
    s = store.settings
    r = await store.scripts.extend(
        store.redis,
        [*keys.call_keys(call_id), keys.shard.recharge],
        [
            account_id,
            call_id,
            extend_id or "",
            s.call_grant_s,
            s.call_validity_grace_s,
            s.call_duration_s_max,
            s.call_extends_max,
            s.live_channel,
        ],
    )
    raise_refusal(r, account_id, call_id)
    return _counted(EXTENDED, Grant.from_answer(call_id, r, total_granted_seconds=int(r[9])))


async def commit(store: Store, account_id: str, call_id: str, duration_seconds: int) -> CallCharge:
    """Charge the real duration (see the rule in lua/commit.lua) and close the call."""
    fields.account_id(account_id)
    fields.request_id(call_id, "call_id")
    if duration_seconds == 0:
        # A call that never connected is released, not committed at zero.
        raise InvalidRequest(
            "duration_seconds",
            "duration_seconds must be at least 1; release a call that never connected",
        )
    fields.integer(duration_seconds, "duration_seconds", 1, store.settings.call_duration_s_max)
    keys = store.account_keys(account_id)
    s = store.settings
    r = await store.scripts.commit(
        store.redis,
        [
            *keys.call_keys(call_id),
            keys.shard.ledger,
            keys.shard.recharge,
            keys.shard.events,
            spend_key(s, keys.shard),
        ],
        [
            account_id,
            call_id,
            duration_seconds,
            s.idempotency_window_s,
            s.call_late_commit_window_s,
            s.live_channel,
            spend_ttl_s(s),
        ],
    )
    raise_refusal(r, account_id, call_id)
    return _counted(
        COMMITTED,
        CallCharge(
            call_id,
            duration_seconds,
            int(r[3]),
            int(r[2]),
            int(r[4]),
            int(r[5]),
            int(r[6]),
            int(r[7]) == 1,
            r[1] == 1,
            _correction(r, 8),
        ),
    )


async def release(store: Store, account_id: str, call_id: str) -> Release:
    """The call never connected: return its reservation, charge nothing."""
    fields.account_id(account_id)
    fields.request_id(call_id, "call_id")
    keys = store.account_keys(account_id)
    s = store.settings
    r = await store.scripts.release(
        store.redis,
        [*keys.call_keys(call_id), keys.shard.ledger, keys.shard.events, spend_key(s, keys.shard)],
        [
            account_id,
            call_id,
            s.idempotency_window_s,
            s.live_channel,
            s.call_late_commit_window_s,
            spend_ttl_s(s),
        ],
    )
    raise_refusal(r, account_id, call_id)
    return _counted(
        RELEASED,
        Release(call_id, int(r[2]), int(r[3]), int(r[4]), r[1] == 1, _correction(r, 5)),
    )


def _counted(event: tuple[str], answer: Answer) -> Answer:
    if not answer.replayed:
        METRICS.reservations.inc(event)
    return answer


def _correction(answer: list[Any], index: int) -> int:
    """The correction_micros of a commit or release answer (answers stored before
    late commits existed replay without it)."""
    return int(answer[index]) if len(answer) > index else 0
