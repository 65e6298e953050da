"""A plain-Python model of one account that predicts every answer the gateway gives.

The model follows the README's rules (the billing grid, the grant sharing, the
commit cap, the expiry policy, idempotency within the window, recharge, pay
now) written again from the documentation, with integers only, not by calling
the product's code.

What the real system does on its own clock (the sweeper expiring a call, the
recharge worker crediting or ending an episode, a webhook crediting a payment
whose answer was lost) cannot be predicted to the millisecond. The model
therefore keeps a small set of *worlds* per account: each is one account
state the system may be in. An answer or an audit read must match at least
one world; the worlds that do not match are dropped. Background *events* are
fired lazily: only when no world explains an observation are worlds expanded
by the events that were possible by then (see Account.observe).

An operation whose outcome the client never learned (a 503 from a dead Redis,
a connection cut) forks at once: applied and not applied. The retry with the
same id that every switch makes settles which.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000
BALANCE_MICROS_MAX = 10**15
CREDIT_MICROS_MAX = 10**13
PRICE_MICROS_MAX = 10**9
RECHARGE_AMOUNT_MICROS_ABOVE = 50 * MICROS_PER_USD
RECHARGE_THRESHOLD_MICROS_MIN = 10 * MICROS_PER_USD
ITEMS = {
    "sms_outbound": ("message", "sms_outbound_micros"),
    "sms_inbound": ("message", "sms_inbound_micros"),
    "ring_through_attempt": ("attempt", "ring_through_attempt_micros"),
    "number_purchase": ("purchase", "number_purchase_micros"),
    "number_renewal": ("renewal", "number_renewal_micros"),
}
# Worlds kept per account before the driver must settle them with a read.
WORLDS_MAX = 256


# ---- the billing arithmetic, from the README's rules ----


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def billable_seconds(d: int, min_s: int, inc_s: int) -> int:
    if d <= 0:
        return 0
    if d <= min_s:
        return min_s
    return min_s + ceil_div(d - min_s, inc_s) * inc_s


def first_unit(min_s: int, inc_s: int) -> int:
    return min_s if min_s > 0 else inc_s


def floor_to_grid(s: int, min_s: int, inc_s: int) -> int:
    if min_s > 0:
        if s < min_s:
            return 0
        return min_s + (s - min_s) // inc_s * inc_s
    return s // inc_s * inc_s


def call_cost(s: int, per_minute: int) -> int:
    return ceil_div(s * per_minute, 60)


def affordable_seconds(micros: int, per_minute: int, min_s: int, inc_s: int, cap_s: int) -> int:
    raw = cap_s
    if micros <= 0:
        raw = 0
    elif per_minute > 0 and micros < call_cost(cap_s, per_minute):
        raw = micros * 60 // per_minute
    return floor_to_grid(raw, min_s, inc_s)


# ---- matching answers ----


@dataclasses.dataclass(frozen=True)
class Between:
    """An answer field known only within bounds (e.g. a validity that depends on
    when exactly the script ran)."""

    lo: int
    hi: int

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, int) and not isinstance(other, bool) and self.lo <= other <= self.hi
        )

    def __hash__(self) -> int:
        return hash((self.lo, self.hi))


class _Anything:
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Anything()


def matches(expect: Any, got: Any) -> bool:
    """expect's keys (recursively) hold in got; values compare with ==."""
    if expect is ANY:
        return True
    if isinstance(expect, dict):
        if not isinstance(got, dict):
            return False
        return all(k in got and matches(v, got[k]) for k, v in expect.items())
    if isinstance(expect, bool) or isinstance(got, bool):
        return type(expect) is type(got) and expect == got
    return bool(expect == got)


def error(code: str, **details: Any) -> dict[str, Any]:
    return {"error": code, **details}


# ---- the state of one account in one world ----


@dataclasses.dataclass
class Call:
    call_id: str
    direction: str
    rate: int
    inc: int
    min_s: int
    granted_s: int = 0
    held: int = 0
    extends: int = 0
    state: str = "open"  # open, committed, released, expired
    expires_lo_ms: int = 0
    expires_hi_ms: int = 0
    reserve_body: dict[str, Any] | None = None
    commit_body: dict[str, Any] | None = None
    commit_duration: int = 0
    release_body: dict[str, Any] | None = None
    extend_bodies: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # When the call hash was closed: it is forgotten one idempotency window later.
    closed_lo_ms: int = 0
    closed_hi_ms: int = 0
    # What the sweeper's expiry took (a late commit or release corrects it).
    expired_charge: int = 0
    # When the expiry happened (the late window counts from it).
    expired_lo_ms: int = 0
    expired_hi_ms: int = 0


@dataclasses.dataclass
class Remembered:
    """A one-shot request's first answer, kept for the idempotency window."""

    fingerprint: str
    body: dict[str, Any]
    at_lo_ms: int
    at_hi_ms: int
    # Answered in a window a Redis crash lost: remembered, or not.
    uncertain: bool = False


@dataclasses.dataclass
class Payment:
    amount: int
    status: str  # succeeded, failed, pending (charged or not: the answer was lost)
    body: dict[str, Any] | None = None
    credited: bool = False


@dataclasses.dataclass
class Entry:
    """A ledger entry the model knows of: answered (exact) or from an event."""

    seq: int
    item: str
    amount: int
    balance_after: int
    request_id: str  # for events, what the row must carry ('' when unknown)
    source: str  # answer, expiry, recharge, payment, late_commit


@dataclasses.dataclass
class State:
    account_id: str
    exists: bool = False
    rate_card: dict[str, int] = dataclasses.field(default_factory=dict)
    max_concurrent_calls: int = 0
    balance: int = 0
    reserved: int = 0
    seq: int = 0
    calls: dict[str, Call] = dataclasses.field(default_factory=dict)
    requests: dict[tuple[str, str], Remembered] = dataclasses.field(default_factory=dict)
    # A digest of the remembered request keys (cheap de-duplication of worlds).
    requests_digest: int = 0
    payments: dict[str, Payment] = dataclasses.field(default_factory=dict)
    card: dict[str, Any] | None = None
    card_declines: bool = False
    recharge_enabled: bool = False
    recharge_amount: int | None = None
    recharge_threshold: int | None = None
    recharge_email: str | None = None
    recharge_pending: bool = False
    recharge_pending_amount: int = 0
    recharge_pending_since_ms: int = 0
    # The worker may end the episode without a charge (off, no card, above the
    # threshold, a declining card) once any of these held while it was pending.
    recharge_end_allowed: bool = False
    # Recharges credited since the last crossing (at most one per crossing).
    recharges_credited: int = 0
    # An episode Postgres holds open that Redis's pending mark no longer shows (the
    # mark was lost with Redis): the worker may still charge and credit it, or end
    # it; its amount, 0 for none.
    recharge_orphan_amount: int = 0
    entries: list[Entry] = dataclasses.field(default_factory=list)
    # The card and recharge settings are Postgres-first: when a change committed
    # there but its copy to Redis failed (the repair copies it later), Postgres's
    # values wait here while the fields above still show Redis's.
    pg_pending: dict[str, Any] | None = None
    # Which background events this world has fired (for the report).
    fired: tuple[str, ...] = ()
    # A digest of which seqs hold answered entries: two worlds with the same state
    # may differ in that (a commit in time, or an expiry and a late commit that
    # corrected nothing), and only the ledger tells them apart.
    answers_digest: int = 0

    def clone(self) -> State:
        new = copy.copy(self)
        new.calls = {k: copy.copy(v) for k, v in self.calls.items()}
        for c in new.calls.values():
            c.extend_bodies = dict(c.extend_bodies)
        new.requests = dict(self.requests)
        new.payments = {k: copy.copy(v) for k, v in self.payments.items()}
        new.entries = list(self.entries)
        new.rate_card = dict(self.rate_card)
        return new

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def key(self) -> tuple[Any, ...]:
        """Worlds with the same key are the same world (for de-duplication)."""
        return (
            self.exists,
            self.balance,
            self.reserved,
            self.seq,
            # When a call closed decides when its record goes (the window), when it
            # was reserved when it expires: two worlds where a lost request applied
            # at different tries stay apart.
            tuple(
                sorted(
                    (c.call_id, c.state, c.held, c.granted_s, c.closed_lo_ms, c.expires_lo_ms)
                    for c in self.calls.values()
                )
            ),
            self.recharge_pending,
            # Which crossing asked decides the amount credited (the settings then).
            self.recharge_pending_amount if self.recharge_pending else 0,
            self.recharge_orphan_amount,
            # The card and recharge settings: a change whose answer was lost makes a
            # world that differs only in them, and its own answers later tell.
            self.recharge_enabled,
            self.recharge_amount,
            self.recharge_threshold,
            self.recharge_email,
            repr(sorted(self.card.items())) if self.card is not None else "",
            self.card_declines,
            tuple(sorted((k, v.status, v.credited) for k, v in self.payments.items())),
            len(self.requests),
            self.requests_digest,
            self.answers_digest,
            repr(sorted(self.pg_pending.items())) if self.pg_pending else "",
        )

    def pg(self, name: str) -> Any:
        """A card or recharge field as Postgres holds it."""
        if self.pg_pending is not None and name in self.pg_pending:
            return self.pg_pending[name]
        return getattr(self, name)

    # -- the pieces every script shares --

    def remember(self, key: tuple[str, str], rem: Remembered) -> None:
        old = self.requests.get(key)
        if old is not None:
            self.requests_digest ^= hash((key, old.at_lo_ms))
        self.requests_digest ^= hash((key, rem.at_lo_ms))
        self.requests[key] = rem

    def add_entry(self, item: str, amount: int, request_id: str, source: str) -> None:
        self.seq += 1
        if source == "answer":
            self.answers_digest ^= hash((self.seq, request_id))
        self.entries.append(Entry(self.seq, item, amount, self.balance, request_id, source))

    def maybe_request_recharge(self, at_ms: int) -> None:
        """lua/_lib.lua's rule: the first change that takes available below the
        threshold marks a recharge pending (once)."""
        if (
            self.recharge_enabled
            and not self.recharge_pending
            and self.recharge_threshold is not None
            and self.available < self.recharge_threshold
        ):
            self.recharge_pending = True
            self.recharge_pending_amount = self.recharge_amount or 0
            self.recharge_pending_since_ms = at_ms
            self.recharge_end_allowed = False
            self.note_recharge_conditions()

    def apply_pg_pending(self) -> None:
        """Redis now holds Postgres's card and recharge settings (a copy was made)."""
        if self.pg_pending is not None:
            for name, value in self.pg_pending.items():
                setattr(self, name, value)
            self.pg_pending = None
            self.note_recharge_conditions()

    def note_recharge_conditions(self) -> None:
        if not self.recharge_pending:
            return
        threshold = self.recharge_threshold or 0
        if (
            not self.recharge_enabled
            or self.card is None
            or self.card_declines
            or self.available >= threshold
        ):
            self.recharge_end_allowed = True

    def note_crossing(self) -> None:
        """Available back at or above the threshold: a new crossing may recharge again."""
        if self.recharge_threshold is not None and self.available >= self.recharge_threshold:
            self.recharges_credited = 0


@dataclasses.dataclass(frozen=True)
class Window:
    """When an operation ran: between the request leaving and the answer arriving (ms)."""

    lo_ms: int
    hi_ms: int


@dataclasses.dataclass
class Limits:
    """The settings the model needs (a copy of the simulation's gateway settings)."""

    call_grant_s: int
    call_validity_grace_s: int
    call_duration_s_max: int
    call_extends_max: int
    idempotency_window_s: int
    call_late_commit_window_s: int
    payment_micros_min: int
    payment_micros_max: int
    recharge_amount_micros_max: int | None = None
    # Slack for clocks and schedulers when comparing times (ms).
    slack_ms: int = 250
    # Rules the model waives (`python -m sim --waive`): to look past a defect that is
    # known and still open, so a run explores beyond it. Never in the CI profile.
    waived: frozenset[str] = frozenset()


@dataclasses.dataclass
class Outcome:
    """One answer the model predicts, and the state it leaves."""

    status: int
    expect: dict[str, Any]
    next: State | None  # None: the state does not change
    note: str = ""
    # Called with the real answer body, to remember it for replays.
    bind: Callable[[dict[str, Any]], None] | None = None


def _remember_body(holder: Any, attr: str) -> Callable[[dict[str, Any]], None]:
    def bind(body: dict[str, Any]) -> None:
        setattr(holder, attr, body)

    return bind


# ---- predictions, one function per operation ----


class Predict:
    """Every prediction takes (state, request, when) and returns the possible outcomes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    # time helpers

    def _window_ms(self) -> int:
        return self.limits.idempotency_window_s * 1000

    def _remembered(self, r: Remembered | None, when: Window) -> list[bool]:
        """Whether a remembered answer is still there at `when`: [True], [False] or both."""
        if r is None:
            return [False]
        if r.uncertain:
            return [True, False]
        w, s = self._window_ms(), self.limits.slack_ms
        if when.hi_ms < r.at_lo_ms + w - s:
            return [True]
        if when.lo_ms > r.at_hi_ms + w + s:
            return [False]
        return [True, False]

    def _in_late_window(self, c: Call, when: Window) -> list[bool]:
        """Whether an expired call still takes the switch's final report at `when`."""
        w, s = self.limits.call_late_commit_window_s * 1000, self.limits.slack_ms
        if when.hi_ms < c.expired_lo_ms + w - s:
            return [True]
        if when.lo_ms > c.expired_hi_ms + w + s:
            return [False]
        return [True, False]

    def _call_present(self, c: Call | None, when: Window) -> list[bool]:
        if c is None:
            return [False]
        if c.state == "open":
            return [True]
        w, s = self._window_ms(), self.limits.slack_ms
        if when.hi_ms < c.closed_lo_ms + w - s:
            return [True]
        if when.lo_ms > c.closed_hi_ms + w + s:
            return [False]
        return [True, False]

    # one-shot debits

    def debit(
        self,
        st: State,
        item: str,
        request_id: str,
        fingerprint: str,
        when: Window,
        extra: dict[str, Any],
    ) -> list[Outcome]:
        kind, price_field = ITEMS[item]
        out: list[Outcome] = []
        prior = st.requests.get((kind, request_id))
        for present in self._remembered(prior, when):
            if present:
                assert prior is not None
                if prior.fingerprint != fingerprint:
                    out.append(Outcome(409, error("idempotency_conflict"), None, "id reused"))
                else:
                    out.append(Outcome(200, prior.body, None, "replay"))
                continue
            out.extend(
                self._debit_fresh(st, item, kind, price_field, request_id, fingerprint, when, extra)
            )
        return out

    def _debit_fresh(
        self,
        st: State,
        item: str,
        kind: str,
        price_field: str,
        request_id: str,
        fingerprint: str,
        when: Window,
        extra: dict[str, Any],
    ) -> list[Outcome]:
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        cost = st.rate_card[price_field]
        available = st.available
        if available < cost or (cost == 0 and available <= 0):
            return [
                Outcome(
                    402,
                    error("insufficient_funds", cost_micros=cost, available_micros=available),
                    None,
                )
            ]
        new = st.clone()
        new.balance -= cost
        new.add_entry(item, -cost, request_id, "answer")
        new.maybe_request_recharge(when.lo_ms)
        body = {
            **extra,
            "item": item,
            "charged_micros": cost,
            "balance_micros": new.balance,
            "reserved_micros": new.reserved,
            "available_micros": new.available,
            "seq": new.seq,
        }
        rem = Remembered(fingerprint, body, when.lo_ms, when.hi_ms)
        new.remember((kind, request_id), rem)
        return [Outcome(200, body, new, "charged", _remember_body(rem, "body"))]

    # ops credits

    def credit(
        self, st: State, credit_id: str, amount: int, reason: str, when: Window
    ) -> list[Outcome]:
        fingerprint = f"{amount};ops_credit;{reason}"
        out: list[Outcome] = []
        prior = st.requests.get(("credit", credit_id))
        for present in self._remembered(prior, when):
            if present:
                assert prior is not None
                if prior.fingerprint != fingerprint:
                    out.append(Outcome(409, error("idempotency_conflict"), None))
                else:
                    out.append(Outcome(200, prior.body, None, "replay"))
                continue
            if not st.exists:
                out.append(Outcome(404, error("unknown_account"), None))
                continue
            if st.balance + amount > BALANCE_MICROS_MAX:
                out.append(Outcome(422, error("balance_limit"), None))
                continue
            new = st.clone()
            new.balance += amount
            new.add_entry("funds_added", amount, credit_id, "answer")
            new.note_crossing()
            new.note_recharge_conditions()
            body = {
                "credit_id": credit_id,
                "credited_micros": amount,
                "balance_micros": new.balance,
                "reserved_micros": new.reserved,
                "available_micros": new.available,
                "seq": new.seq,
            }
            rem = Remembered(fingerprint, body, when.lo_ms, when.hi_ms)
            new.remember(("credit", credit_id), rem)
            out.append(Outcome(200, body, new, "credited", _remember_body(rem, "body")))
        return out

    # calls

    def reserve(self, st: State, call_id: str, direction: str, when: Window) -> list[Outcome]:
        c = st.calls.get(call_id)
        out: list[Outcome] = []
        for present in self._call_present(c, when):
            if present:
                assert c is not None and c.reserve_body is not None
                if c.direction != direction:
                    out.append(Outcome(409, error("idempotency_conflict"), None))
                else:
                    out.append(Outcome(200, c.reserve_body, None, "replay"))
                continue
            out.extend(self._reserve_fresh(st, call_id, direction, when))
        return out

    def _reserve_fresh(
        self, st: State, call_id: str, direction: str, when: Window
    ) -> list[Outcome]:
        lim = self.limits
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        rc = st.rate_card
        rate = rc[f"call_{direction}_per_minute_micros"]
        inc, min_s = rc["call_increment_seconds"], rc["call_minimum_seconds"]
        open_calls = sum(1 for c in st.calls.values() if c.state == "open")
        if st.max_concurrent_calls > 0 and open_calls >= st.max_concurrent_calls:
            return [
                Outcome(429, error("concurrent_call_limit", limit=st.max_concurrent_calls), None)
            ]
        cap = lim.call_duration_s_max
        available = st.available
        unit = first_unit(min_s, inc)
        max_s = affordable_seconds(available, rate, min_s, inc, cap)
        if max_s == 0:
            return [
                Outcome(
                    402,
                    error(
                        "insufficient_funds",
                        cost_micros=call_cost(unit, rate),
                        available_micros=available,
                    ),
                    None,
                )
            ]
        chunk = floor_to_grid(lim.call_grant_s, min_s, inc)
        if chunk < unit:
            chunk = unit
        share = affordable_seconds(available // (open_calls + 1), rate, min_s, inc, cap)
        grant = min(chunk, max(share, unit), max_s)
        held = call_cost(grant, rate)
        validity = grant + lim.call_validity_grace_s
        new = st.clone()
        new.reserved += held
        call = Call(
            call_id,
            direction,
            rate,
            inc,
            min_s,
            granted_s=grant,
            held=held,
            expires_lo_ms=when.lo_ms + validity * 1000 - 1,
            expires_hi_ms=when.hi_ms + validity * 1000,
        )
        body = {
            "call_id": call_id,
            "granted_seconds": grant,
            "total_granted_seconds": grant,
            "max_seconds": max_s,
            "validity_seconds": validity,
            "final": grant >= max_s,
            "call_reserved_micros": held,
            "balance_micros": new.balance,
            "reserved_micros": new.reserved,
            "available_micros": new.available,
        }
        call.reserve_body = body
        new.calls[call_id] = call
        new.maybe_request_recharge(when.lo_ms)
        return [Outcome(200, body, new, "reserved", _remember_body(call, "reserve_body"))]

    def extend(self, st: State, call_id: str, extend_id: str | None, when: Window) -> list[Outcome]:
        lim = self.limits
        c = st.calls.get(call_id)
        out: list[Outcome] = []
        for present in self._call_present(c, when):
            if not present:
                out.append(Outcome(404, error("unknown_call"), None))
                continue
            assert c is not None
            if extend_id is not None and extend_id in c.extend_bodies:
                out.append(Outcome(200, c.extend_bodies[extend_id], None, "replay"))
                continue
            if c.state != "open":
                out.append(Outcome(409, error("call_closed", state=c.state), None))
                continue
            if c.extends >= lim.call_extends_max:
                out.append(Outcome(409, error("call_extend_limit"), None))
                continue
            cap = lim.call_duration_s_max
            if c.granted_s >= floor_to_grid(cap, c.min_s, c.inc):
                out.append(
                    Outcome(409, error("call_duration_limit", limit_seconds=cap), None, "at cap")
                )
                continue
            available = st.available
            reach = affordable_seconds(c.held + available, c.rate, c.min_s, c.inc, cap)
            max_s = reach - c.granted_s
            if max_s <= 0:
                out.append(
                    Outcome(
                        402,
                        error(
                            "insufficient_funds",
                            cost_micros=call_cost(c.granted_s + c.inc, c.rate) - c.held,
                            available_micros=available,
                        ),
                        None,
                    )
                )
                continue
            open_calls = sum(1 for x in st.calls.values() if x.state == "open")
            share_reach = affordable_seconds(
                c.held + available // max(open_calls, 1), c.rate, c.min_s, c.inc, cap
            )
            chunk = max(c.inc, lim.call_grant_s // c.inc * c.inc)
            extra = min(chunk, max(share_reach - c.granted_s, c.inc), max_s)
            new_total = c.granted_s + extra
            new_held = call_cost(new_total, c.rate)
            grace_ms = lim.call_validity_grace_s * 1000
            # expires = max(old expiry, now + grace) + extra;
            # validity = ceil((expires - now) / 1000)
            exp_lo = max(c.expires_lo_ms, when.lo_ms + grace_ms) + extra * 1000
            exp_hi = max(c.expires_hi_ms, when.hi_ms + grace_ms) + extra * 1000
            v_lo = max(
                ceil_div(max(c.expires_lo_ms - when.hi_ms, 0), 1000), lim.call_validity_grace_s
            )
            v_hi = max(
                ceil_div(max(c.expires_hi_ms - when.lo_ms, 0), 1000), lim.call_validity_grace_s
            )
            new = st.clone()
            nc = new.calls[call_id]
            new.reserved += new_held - c.held
            nc.granted_s, nc.held, nc.extends = new_total, new_held, c.extends + 1
            nc.expires_lo_ms, nc.expires_hi_ms = exp_lo - 1, exp_hi
            body = {
                "call_id": call_id,
                "granted_seconds": extra,
                "total_granted_seconds": new_total,
                "max_seconds": max_s,
                "validity_seconds": Between(v_lo + extra, v_hi + extra + 1),
                "final": new_total >= reach,
                "call_reserved_micros": new_held,
                "balance_micros": new.balance,
                "reserved_micros": new.reserved,
                "available_micros": new.available,
            }
            bind = None
            if extend_id is not None:
                nc.extend_bodies[extend_id] = body

                def bind(got: dict[str, Any], nc: Call = nc, eid: str = extend_id) -> None:
                    nc.extend_bodies[eid] = got

            new.maybe_request_recharge(when.lo_ms)
            out.append(Outcome(200, body, new, "extended", bind))
        return out

    def commit(self, st: State, call_id: str, duration: int, when: Window) -> list[Outcome]:
        c = st.calls.get(call_id)
        out: list[Outcome] = []
        for present in self._call_present(c, when):
            if not present:
                out.append(Outcome(404, error("unknown_call"), None))
                continue
            assert c is not None
            if c.state == "committed":
                if c.commit_duration != duration:
                    out.append(Outcome(409, error("idempotency_conflict"), None))
                else:
                    assert c.commit_body is not None
                    out.append(Outcome(200, c.commit_body, None, "replay"))
                continue
            lates = self._in_late_window(c, when) if c.state == "expired" else [False]
            for late in lates:
                if c.state != "open" and not late:
                    out.append(Outcome(409, error("call_closed", state=c.state), None))
                    continue
                out.append(self._commit(st, c, duration, when, late))
        return out

    def _commit(self, st: State, c: Call, duration: int, when: Window, late: bool) -> Outcome:
        billed = billable_seconds(duration, c.min_s, c.inc)
        cost = call_cost(billed, c.rate)
        held = c.expired_charge if late else c.held
        charge = min(cost, held + max(0, st.available))
        new = st.clone()
        nc = new.calls[c.call_id]
        item = f"call_{c.direction}"
        correction = 0
        if late:
            correction = held - charge
            if correction:
                new.balance += correction
                new.add_entry(item, correction, c.call_id, "late_commit")
        else:
            new.balance -= charge
            new.reserved -= c.held
            if charge > 0:
                new.add_entry(item, -charge, c.call_id, "answer")
            nc.closed_lo_ms, nc.closed_hi_ms = when.lo_ms, when.hi_ms
        nc.state, nc.commit_duration = "committed", duration
        body = {
            "call_id": c.call_id,
            "duration_seconds": duration,
            "billed_seconds": billed,
            "charged_micros": charge,
            "capped": charge < cost,
            "correction_micros": correction,
            "balance_micros": new.balance,
            "reserved_micros": new.reserved,
            "available_micros": new.available,
            "seq": new.seq,
        }
        nc.commit_body = body
        new.maybe_request_recharge(when.lo_ms)
        new.note_crossing()
        new.note_recharge_conditions()
        note = "late commit" if late else "committed"
        return Outcome(200, body, new, note, _remember_body(nc, "commit_body"))

    def release(self, st: State, call_id: str, when: Window) -> list[Outcome]:
        c = st.calls.get(call_id)
        out: list[Outcome] = []
        for present in self._call_present(c, when):
            if not present:
                out.append(Outcome(404, error("unknown_call"), None))
                continue
            assert c is not None
            if c.state == "released":
                assert c.release_body is not None
                out.append(Outcome(200, c.release_body, None, "replay"))
                continue
            lates = self._in_late_window(c, when) if c.state == "expired" else [False]
            for late in lates:
                if c.state != "open" and not late:
                    out.append(Outcome(409, error("call_closed", state=c.state), None))
                    continue
                new = st.clone()
                nc = new.calls[call_id]
                correction = 0
                if late:
                    correction = c.expired_charge
                    if correction:
                        new.balance += correction
                        new.add_entry(f"call_{c.direction}", correction, call_id, "late_release")
                else:
                    new.reserved -= c.held
                    nc.closed_lo_ms, nc.closed_hi_ms = when.lo_ms, when.hi_ms
                nc.state = "released"
                body = {
                    "call_id": call_id,
                    "charged_micros": 0,
                    "correction_micros": correction,
                    "released_micros": 0 if late else c.held,
                    "balance_micros": new.balance,
                    "reserved_micros": new.reserved,
                    "available_micros": new.available,
                }
                nc.release_body = body
                new.note_crossing()
                new.note_recharge_conditions()
                note = "late release" if late else "released"
                out.append(Outcome(200, body, new, note, _remember_body(nc, "release_body")))
        return out

    # the account view

    def get_account(self, st: State) -> list[Outcome]:
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        recharge: dict[str, Any] = {
            "enabled": st.recharge_enabled,
            "amount_micros": st.recharge_amount,
            "threshold_micros": st.recharge_threshold,
            "failure_email": st.recharge_email,
            "pending": st.recharge_pending,
        }
        body = {
            "account_id": st.account_id,
            "balance_micros": st.balance,
            "reserved_micros": st.reserved,
            "available_micros": st.available,
            "seq": st.seq,
            "rate_card": st.rate_card,
            "max_concurrent_calls": st.max_concurrent_calls,
            "open_calls": sum(1 for c in st.calls.values() if c.state == "open"),
            "recharge": recharge,
            "card": st.card,
        }
        return [Outcome(200, body, None, "read")]

    # payments (customer endpoints)

    def recharge_settings(self, st: State, body: dict[str, Any]) -> list[Outcome]:
        lim = self.limits
        amount, threshold = body.get("amount_micros"), body.get("threshold_micros")
        email, enabled = body.get("failure_email"), body.get("enabled")
        bad = _recharge_field_error(
            amount,
            threshold,
            email,
            enabled,
            lim.recharge_amount_micros_max,
            "recharge_rules" not in lim.waived,
        )
        if bad is not None:
            return [Outcome(422, error("invalid_request", field=bad), None, "refused")]
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        if enabled and st.pg("card") is None:
            return [Outcome(422, error("invalid_request", field="enabled"), None, "no card")]
        new = st.clone()
        new.apply_pg_pending()
        new.recharge_enabled = bool(enabled)
        new.recharge_amount, new.recharge_threshold = amount, threshold
        new.recharge_email = email
        new.note_crossing()
        new.note_recharge_conditions()
        answer = {
            "account_id": st.account_id,
            "enabled": bool(enabled),
            "amount_micros": amount,
            "threshold_micros": threshold,
            "failure_email": email,
        }
        return [Outcome(200, answer, new, "saved")]

    def put_card(self, st: State, pm: str, card_answer: dict[str, Any] | None) -> list[Outcome]:
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        new = st.clone()
        new.apply_pg_pending()
        expect = {"account_id": st.account_id, **(card_answer or {"brand": ANY, "last4": ANY})}
        # The card as the answer will show it (bind takes the real answer's). When
        # the answer is lost the card is still set: this world is the one where the
        # change applied.
        new.card = {
            k: (card_answer or {}).get(k, ANY) for k in ("brand", "last4", "exp_month", "exp_year")
        }
        new.card_declines = pm == "pm_card_chargeCustomerFail"
        new.note_recharge_conditions()

        def bind(got: dict[str, Any], new: State = new) -> None:
            new.card = {k: got[k] for k in ("brand", "last4", "exp_month", "exp_year")}

        return [Outcome(200, expect, new, "card", bind)]

    def delete_card(self, st: State) -> list[Outcome]:
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        new = st.clone()
        had = st.pg("card") is not None
        new.pg_pending = None
        new.card = None
        new.card_declines = False
        new.recharge_enabled = False
        new.note_recharge_conditions()
        body = {"account_id": st.account_id, "deleted": had, "recharge_enabled": False}
        return [Outcome(200, body, new, "card deleted")]

    def pay_now(self, st: State, payment_id: str, amount: int, when: Window) -> list[Outcome]:
        """Pay now: one charge and one credit per payment id, forever (the money
        guarantee is not bounded by the idempotency window)."""
        lim = self.limits
        if not lim.payment_micros_min <= amount <= lim.payment_micros_max:
            return [Outcome(422, error("invalid_request", field="amount_micros"), None)]
        if amount % MICROS_PER_CENT:
            return [Outcome(422, error("invalid_request", field="amount_micros"), None)]
        if not st.exists:
            return [Outcome(404, error("unknown_account"), None)]
        prior = st.payments.get(payment_id)
        if prior is not None:
            if prior.amount != amount:
                return [Outcome(409, error("idempotency_conflict"), None)]
            if prior.status == "succeeded":
                # Credited by a webhook or the repair when the first answer was
                # lost: the replay is the payment, with the balance of the credit.
                first = prior.body or {
                    "account_id": st.account_id,
                    "payment_id": payment_id,
                    "amount_micros": amount,
                    "status": "succeeded",
                    "payment_intent_id": ANY,
                }
                replay = {**first, "balance_micros": ANY, "available_micros": ANY}
                return [Outcome(200, replay, None, "replay")]
            if prior.status == "failed":
                return [Outcome(402, error("payment_failed"), None)]
        if st.pg("card") is None:
            return [Outcome(409, error("no_card_on_file"), None)]
        if st.pg("card_declines"):
            new = st.clone()
            new.payments[payment_id] = Payment(amount, "failed")
            return [Outcome(402, error("card_declined"), new, "declined")]
        new = st.clone()
        if prior is None or not prior.credited:
            new.balance += amount
            new.add_entry("funds_added", amount, payment_id, "payment_answer")
            new.note_crossing()
            new.note_recharge_conditions()
        pay = Payment(amount, "succeeded", credited=True)
        new.payments[payment_id] = pay
        body = {
            "account_id": st.account_id,
            "payment_id": payment_id,
            "amount_micros": amount,
            "status": "succeeded",
            "balance_micros": new.balance,
            "available_micros": new.available,
            "payment_intent_id": ANY,
        }
        pay.body = body
        return [Outcome(200, body, new, "paid", _remember_body(pay, "body"))]

    def pay_now_unknown(self, st: State, payment_id: str, amount: int) -> list[State]:
        """Worlds after a pay now whose answer was lost: the card may have been
        charged without a credit yet (a webhook or the retry credits it)."""
        prior = st.payments.get(payment_id)
        if prior is not None and (prior.status != "pending" or prior.amount != amount):
            return []
        if st.pg("card") is None:
            return []
        new = st.clone()
        if st.pg("card_declines"):
            # Declined, and the failure recorded (by the request or the webhook).
            new.payments[payment_id] = Payment(amount, "failed")
        else:
            new.payments[payment_id] = Payment(amount, "pending")
        return [new]


def _recharge_field_error(
    amount: Any,
    threshold: Any,
    email: Any,
    enabled: Any,
    amount_max: int | None,
    lift_rule: bool = True,
) -> str | None:
    """The field a recharge-settings update is refused for, or None: the README's
    rules, in the order they are checked (amount, threshold, email, enabled). The
    amount is capped and one recharge must lift the balance above the threshold."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(amount) or amount <= RECHARGE_AMOUNT_MICROS_ABOVE:
        return "amount_micros"
    if amount > (amount_max if amount_max is not None else CREDIT_MICROS_MAX):
        return "amount_micros"
    if amount % MICROS_PER_CENT:
        return "amount_micros"
    if not is_int(threshold) or threshold < RECHARGE_THRESHOLD_MICROS_MIN:
        return "threshold_micros"
    if lift_rule and threshold >= amount:
        return "threshold_micros"
    if threshold > CREDIT_MICROS_MAX:
        return "threshold_micros"
    if not isinstance(email, str) or len(email) > 254 or not EMAIL.fullmatch(email):
        return "failure_email"
    if not isinstance(enabled, bool):
        return "enabled"
    return None


EMAIL = re.compile(r"[^@\s,;]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


# ---- background events ----


@dataclasses.dataclass(frozen=True)
class Event:
    # expire, recharge_credit, recharge_end, payment_credit, settings_copied
    kind: str
    subject: str  # call id or payment id ('' for recharge)

    def label(self) -> str:
        return f"{self.kind}:{self.subject}" if self.subject else self.kind


def possible_events(st: State, now_ms: int) -> list[Event]:
    """What the system may have done on its own by now_ms, in this world."""
    out: list[Event] = []
    for c in st.calls.values():
        if c.state == "open" and now_ms >= c.expires_lo_ms:
            out.append(Event("expire", c.call_id))
    if st.recharge_pending:
        out.append(Event("recharge_credit", ""))
        if st.recharge_end_allowed:
            out.append(Event("recharge_end", ""))
    if st.recharge_orphan_amount:
        out.append(Event("orphan_credit", ""))
        out.append(Event("orphan_end", ""))
    for pid, p in st.payments.items():
        if p.status == "pending" and not p.credited:
            out.append(Event("payment_credit", pid))
    if st.pg_pending is not None:
        out.append(Event("settings_copied", ""))
    return out


def fire(st: State, ev: Event, now_ms: int) -> State | None:
    """The world after `ev`, or None if it cannot happen in this world."""
    new = st.clone()
    new.fired = (*st.fired, ev.label())
    if ev.kind == "expire":
        c = new.calls.get(ev.subject)
        if c is None or c.state != "open":
            return None
        charge = min(c.held, new.balance)
        new.balance -= charge
        new.reserved -= c.held
        if charge > 0:
            new.add_entry(f"call_{c.direction}", -charge, c.call_id, "expiry")
        c.state = "expired"
        c.expired_charge = charge
        c.closed_lo_ms, c.closed_hi_ms = c.expires_lo_ms, max(now_ms, c.expires_lo_ms)
        c.expired_lo_ms, c.expired_hi_ms = c.closed_lo_ms, c.closed_hi_ms
        new.maybe_request_recharge(now_ms)
        return new
    if ev.kind == "recharge_credit":
        if not new.recharge_pending:
            return None
        amount = new.recharge_pending_amount
        if new.balance + amount > BALANCE_MICROS_MAX:
            return None
        new.balance += amount
        new.add_entry("funds_added", amount, "", "recharge")
        new.recharge_pending = False
        new.recharges_credited += 1
        new.note_crossing()
        return new
    if ev.kind == "recharge_end":
        if not new.recharge_pending:
            return None
        new.recharge_pending = False
        return new
    if ev.kind == "orphan_credit":
        amount = new.recharge_orphan_amount
        if not amount or new.balance + amount > BALANCE_MICROS_MAX:
            return None
        new.balance += amount
        new.add_entry("funds_added", amount, "", "recharge")
        new.recharge_orphan_amount = 0
        new.recharge_pending = False  # the credit settles its episode
        new.note_crossing()
        return new
    if ev.kind == "orphan_end":
        if not new.recharge_orphan_amount:
            return None
        new.recharge_orphan_amount = 0
        return new
    if ev.kind == "payment_credit":
        p = new.payments.get(ev.subject)
        if p is None or p.credited:
            return None
        new.balance += p.amount
        new.add_entry("funds_added", p.amount, ev.subject, "payment")
        p.credited = True
        p.status = "succeeded"
        new.note_crossing()
        return new
    if ev.kind == "settings_copied":
        if new.pg_pending is None:
            return None
        new.apply_pg_pending()
        return new
    raise AssertionError(ev.kind)


SETTINGS_FIELDS = (
    "card",
    "card_declines",
    "recharge_enabled",
    "recharge_amount",
    "recharge_threshold",
    "recharge_email",
)


def lagging_copy(old: State, applied: State) -> State | None:
    """`applied` with Redis still showing `old`'s card and recharge settings: the
    change committed in Postgres, its copy to Redis failed."""
    changed = {
        n: getattr(applied, n) for n in SETTINGS_FIELDS if getattr(applied, n) != getattr(old, n)
    }
    if not changed:
        return None
    lag = applied.clone()
    for name in changed:
        setattr(lag, name, getattr(old, name))
    lag.pg_pending = changed
    return lag


def expand(worlds: Iterable[State], now_ms: int, depth: int) -> list[State]:
    """Worlds plus every world reachable by up to `depth` background events."""
    seen: dict[tuple[Any, ...], State] = {}
    frontier = list(worlds)
    for w in frontier:
        seen.setdefault(w.key(), w)
    for _ in range(depth):
        nxt: list[State] = []
        for w in frontier:
            for ev in possible_events(w, now_ms):
                fired = fire(w, ev, now_ms)
                if fired is not None:
                    k = fired.key()
                    if k not in seen:
                        seen[k] = fired
                        nxt.append(fired)
        frontier = nxt
        if not frontier or len(seen) > WORLDS_MAX * 4:
            break
    return list(seen.values())


def dedupe(worlds: Iterable[State]) -> list[State]:
    seen: dict[tuple[Any, ...], State] = {}
    for w in worlds:
        seen.setdefault(w.key(), w)
    return list(seen.values())


def combinations(n: int) -> Iterable[tuple[int, ...]]:
    for r in range(n + 1):
        yield from itertools.combinations(range(n), r)


# ---- one account: its worlds, narrowed by every observation ----


@dataclasses.dataclass
class Mismatch:
    """No world explains what the system answered."""

    what: str
    got: Any
    predicted: list[tuple[int, Any, str]]
    worlds: int


class Account:
    """The worlds of one account (see the module docstring)."""

    # Background events tried together before giving up on an observation (under
    # load a sweep may expire many calls of one account at once).
    EVENTS_DEPTH_MAX = 10

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.worlds: list[State] = [State(account_id)]

    def observe(
        self,
        predict: Callable[[State], list[Outcome]],
        status: int,
        body: Any,
        now_ms: int,
    ) -> Mismatch | None:
        """Keep the worlds (with lazily fired events) in which the answer is possible."""
        tried: list[tuple[int, Any, str]] = []
        # Every world up to EVENTS_DEPTH_MAX background events away, and all of
        # those the answer allows: two histories can end in the same answer (a
        # commit in time, or an expiry and a late commit that corrected nothing)
        # and differ later (when the call's record goes). Worlds are told apart by
        # their state, not by the order events fired in: the ledger audit matches
        # the entries of events without their order.
        survivors: list[State] = []
        for w in self._candidates(now_ms):
            for o in predict(w):
                if o.status == status and matches(o.expect, body):
                    if o.bind is not None and isinstance(body, dict):
                        o.bind(body)
                    survivors.append(o.next if o.next is not None else w)
                elif len(tried) < 8:
                    tried.append((o.status, o.expect, o.note))
        if survivors:
            self.worlds = dedupe(survivors)[:WORLDS_MAX]
            return None
        return Mismatch("answer", {"status": status, "body": body}, tried, len(self.worlds))

    def observe_state(
        self,
        fits: Callable[[State], bool],
        now_ms: int,
        what: str,
        got: Any,
        learn: Callable[[State], None] | None = None,
    ) -> Mismatch | None:
        """Keep the worlds consistent with a read of the real state; `learn` copies
        what the read told exactly (e.g. when a call expired) into them."""
        survivors = [w for w in self._candidates(now_ms) if fits(w)]
        if survivors:
            self.worlds = dedupe(survivors)[:WORLDS_MAX]
            if learn is not None:
                self.worlds = [w.clone() for w in self.worlds]
                for w in self.worlds:
                    learn(w)
            return None
        return Mismatch(what, got, [], len(self.worlds))

    def _candidates(self, now_ms: int) -> list[State]:
        if not any(possible_events(w, now_ms) for w in self.worlds):
            return self.worlds
        return expand(self.worlds, now_ms, self.EVENTS_DEPTH_MAX)

    # Background events that may have fired before an operation whose answer was
    # lost applied (its record keeps the state it applied to).
    FORK_EVENTS_DEPTH = 2

    def fork_unknown(
        self,
        predict: Callable[[State], list[Outcome]],
        extra: Callable[[State], list[State]] | None = None,
        now_ms: int | None = None,
    ) -> None:
        """An operation whose answer was lost: it happened, or it did not. If it
        happened, it may have happened after a background event (an expiry, a
        recharge credit) that no answer has shown yet: its remembered answer then
        holds that event's effect, so those orders are worlds of their own."""
        out: list[State] = list(self.worlds)
        bases = (
            self.worlds
            if now_ms is None or not any(possible_events(w, now_ms) for w in self.worlds)
            else expand(self.worlds, now_ms, self.FORK_EVENTS_DEPTH)
        )
        for w in bases:
            for o in predict(w):
                if 200 <= o.status < 300 and o.next is not None:
                    out.append(o.next)
        if extra is not None:
            for w in self.worlds:
                out.extend(extra(w))
        self.worlds = dedupe(out)[:WORLDS_MAX]

    def one(self) -> State:
        """A representative world (the first)."""
        return self.worlds[0]
