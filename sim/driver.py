"""The driver: runs a plan against the real world, checks every answer against the
model, injects faults, and audits the invariants after every batch.

Lanes of one batch run at once (one HTTP connection each, many in flight), the
operations of one lane one after the other, so each account's answers can be
predicted exactly while the gateway is under concurrent load.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import aiohttp

from sim import model
from sim.model import Account, Mismatch, Outcome, Predict, State, Window, error
from sim.plan import AccountPlan, Batch, Op, Plan
from sim.world import OPS_TOKEN, SWITCH_TOKEN, WEBHOOK_SECRET, World

REQUEST_TIMEOUT_S = 15.0
# A retry of an operation whose answer was lost, at most this many times.
RETRIES_MAX = 4
# What localstripe answers for the test cards (brand, last four, expiry).
VISA = {"brand": "visa", "last4": "4242"}
FAILING = {"brand": "visa", "last4": "0341"}


class SimFailure(Exception):
    """An invariant broken or an answer no world explains."""

    def __init__(self, check: str, message: str, account: int | None = None) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check
        self.message = message
        self.account = account


@dataclasses.dataclass
class Answer:
    status: int  # 0: no answer (connection error or timeout)
    body: Any
    error: str = ""
    when: Window = Window(0, 0)

    @property
    def code(self) -> str:
        return self.body.get("error", "") if isinstance(self.body, dict) else ""


@dataclasses.dataclass
class Lane:
    """One account at run time: its model and what the driver learned."""

    plan: AccountPlan
    account_id: str
    model: Account
    token: str | None = None
    payment_intents: list[str] = dataclasses.field(default_factory=list)
    retries: list[tuple[Op, int]] = dataclasses.field(default_factory=list)
    touched: bool = False


@dataclasses.dataclass
class Stats:
    steps: int = 0
    requests: int = 0
    batches: int = 0
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    fuzz_cases: int = 0
    hostile_cases: int = 0
    server_errors: int = 0  # 5xx other than the documented 503s of a fault
    changed_on_4xx: int = 0
    unknown_outcomes: int = 0
    events_fired: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    deep_audits: int = 0
    snapshots: int = 0
    contention_steps: int = 0
    duplicate_steps: int = 0
    lost_in_crash_window: int = 0
    # Known-open checks (sim/known.py) and the first thing each found.
    known_open: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "requests": self.requests,
            "batches": self.batches,
            "faults": dict(self.faults),
            "fuzz_cases": self.fuzz_cases,
            "hostile_cases": self.hostile_cases,
            "5xx": self.server_errors,
            "changed_accounts_on_4xx": self.changed_on_4xx,
            "unknown_outcomes": self.unknown_outcomes,
            "deep_audits": self.deep_audits,
            "contention_steps": self.contention_steps,
            "duplicate_steps": self.duplicate_steps,
            "statuses": dict(sorted(self.statuses.items())),
            "lost_in_crash_window": self.lost_in_crash_window,
            "known_open": dict(self.known_open),
        }


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Faults:
    """Which faults are in force, so an answer that only a fault explains (a 503, a
    cut connection, a full ledger backlog) is accepted only while one is."""

    # How long after a fault ends its effects may still be seen (seconds).
    AFTERMATH_S = 4.0

    def __init__(self) -> None:
        self.active: dict[str, int] = collections.Counter()
        self.ended_at: dict[str, float] = {}

    def begin(self, area: str) -> None:
        self.active[area] += 1

    def end(self, area: str) -> None:
        self.active[area] -= 1
        self.ended_at[area] = time.monotonic()

    def recent(self, *areas: str) -> bool:
        now = time.monotonic()
        return any(
            self.active.get(a, 0) > 0 or now - self.ended_at.get(a, -1e9) < self.AFTERMATH_S
            for a in areas
        )


class Driver:
    def __init__(
        self,
        world: World,
        plan: Plan,
        namespace: str,
        log: Callable[[str], None],
        waived: frozenset[str] = frozenset(),
    ) -> None:
        self.world = world
        self.plan = plan
        self.ns = namespace
        self.log = log
        assert world.settings is not None
        s = world.settings
        self.limits = model.Limits(
            call_grant_s=s.call_grant_s,
            call_validity_grace_s=s.call_validity_grace_s,
            call_duration_s_max=s.call_duration_s_max,
            call_extends_max=s.call_extends_max,
            idempotency_window_s=s.idempotency_window_s,
            call_late_commit_window_s=s.call_late_commit_window_s,
            payment_micros_min=s.payment_micros_min,
            payment_micros_max=s.payment_micros_max,
            recharge_amount_micros_max=s.recharge_micros_max,
            waived=waived,
        )
        self.predict = Predict(self.limits)
        self.lanes = [
            Lane(a, f"{namespace}-a{a.index}", Account(f"{namespace}-a{a.index}"))
            for a in plan.accounts
        ]
        self.stats = Stats()
        self.faults = Faults()
        self.session: aiohttp.ClientSession | None = None
        self.rr = 0
        self.history: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=40)
        )
        self.event_counter = 0

    # ---- HTTP ----

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=128, force_close=False)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _gateway(self) -> str:
        urls = self.world.gateway_urls() or self.world.all_gateway_urls()
        self.rr += 1
        return urls[self.rr % len(urls)]

    async def http(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        assert self.session is not None
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        lo = now_ms()
        self.stats.requests += 1
        try:
            async with self.session.request(
                method, self._gateway() + path, data=data, headers=h
            ) as r:
                text = await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Answer(0, None, f"{type(exc).__name__}: {exc}", Window(lo, now_ms()))
        hi = now_ms()
        self.stats.statuses[status] += 1
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = {"_raw": text[:200].decode(errors="replace")}
        return Answer(status, parsed, "", Window(lo, hi))

    # ---- running batches ----

    async def run_batch(self, batch: Batch) -> None:
        self.stats.batches += 1
        lanes = list(batch.lanes.items())
        await asyncio.gather(*(self.run_lane(self.lanes[i], ops, batch.index) for i, ops in lanes))
        self.stats.steps += sum(len(ops) for _, ops in lanes)

    async def run_lane(self, lane: Lane, ops: list[Op], batch: int) -> None:
        lane.touched = True
        todo = [op for op, _ in lane.retries[:2]] + ops
        retries = lane.retries[:2]
        lane.retries = lane.retries[2:]
        for n, op in enumerate(todo):
            attempt = retries[n][1] if n < len(retries) else 0
            await self.run_op(lane, op, attempt)

    def _record(self, lane: Lane, op: Op, a: Answer, note: str = "") -> None:
        body = json.dumps(a.body, sort_keys=True)[:300] if a.body is not None else a.error[:200]
        self.history[lane.plan.index].append(
            f"{a.when.lo_ms % 100000:>5}ms {op} -> {a.status} {body} {note}"
        )

    def fail(self, check: str, lane: Lane | None, message: str) -> SimFailure:
        idx = lane.plan.index if lane is not None else None
        if lane is not None:
            recent = "\n    ".join(self.history[lane.plan.index])
            message += (
                f"\n  account {lane.account_id} (lane {idx}); its last requests:\n    {recent}"
            )
        return SimFailure(check, message, idx)

    # ---- one operation ----

    async def run_op(self, lane: Lane, op: Op, attempt: int = 0) -> None:
        if self._waived_op(lane, op):
            return
        if op.kind == "webhook":
            await self.run_webhook(lane, op)
            return
        req = self.request_for(lane, op)
        if req is None:
            return
        method, path, token, body, predict, unknown = req
        a = await self.http(method, path, token, body)
        self._record(lane, op, a)
        await self.check_answer(lane, op, a, predict, unknown, attempt)

    @staticmethod
    def _lagging(
        predict: Callable[[State, Window], list[Outcome]], when: Window
    ) -> Callable[[State], list[State]]:
        """A card or settings change whose answer was lost may have committed in
        Postgres without reaching Redis (the repair copies it later)."""

        def worlds(w: State) -> list[State]:
            out = []
            for o in predict(w, when):
                if 200 <= o.status < 300 and o.next is not None:
                    lag = model.lagging_copy(w, o.next)
                    if lag is not None:
                        out.append(lag)
            return out

        return worlds

    def _waived_op(self, lane: Lane, op: Op) -> bool:
        """With credit_once waived, skip what would credit a Stripe charge again."""
        if "credit_once" not in self.limits.waived:
            return False
        if op.kind == "webhook":
            return True
        if op.kind == "pay":
            p = lane.model.one().payments.get(op.args[0])
            return p is not None and p.status == "succeeded"
        return False

    async def check_answer(
        self,
        lane: Lane,
        op: Op,
        a: Answer,
        predict: Callable[[State, Window], list[Outcome]],
        unknown: Callable[[State], list[State]] | None,
        attempt: int,
    ) -> None:
        if a.status >= 500 and a.status != 503:
            self.stats.server_errors += 1
            raise self.fail("5xx", lane, f"{op} answered {a.status}: {a.body}")
        if a.status == 0 or (a.status == 503 and a.code == "unavailable"):
            if not self._fault_explains(op, a):
                raise self.fail(
                    "unavailable",
                    lane,
                    f"{op} got {a.status or a.error} with no fault in force that explains it",
                )
            self.stats.unknown_outcomes += 1
            if unknown is None and op.kind in ("card", "uncard", "recharge"):
                unknown = self._lagging(predict, a.when)
            lane.model.fork_unknown(lambda w: predict(w, a.when), unknown, a.when.hi_ms)
            if attempt < RETRIES_MAX:
                lane.retries.append((op, attempt + 1))
            return
        if a.status == 503 and a.code == "ledger_backlog_full":
            if not self.faults.recent("writer"):
                raise self.fail(
                    "backlog", lane, f"{op}: ledger_backlog_full with the writer healthy"
                )
            if attempt < RETRIES_MAX:
                lane.retries.append((op, attempt + 1))
            return
        if a.status == 503:
            raise self.fail("5xx", lane, f"{op} answered 503 {a.body}")
        miss = lane.model.observe(lambda w: predict(w, a.when), a.status, a.body, a.when.hi_ms)
        if miss is not None:
            raise self.fail("answer", lane, self._explain(op, a, miss))
        if op.kind == "pay" and a.status == 200 and isinstance(a.body, dict):
            pi = a.body.get("payment_intent_id")
            if pi and pi not in lane.payment_intents:
                lane.payment_intents.append(pi)

    def _fault_explains(self, op: Op, a: Answer) -> bool:
        if self.faults.recent("redis", "gateway"):
            return True
        if op.kind in ("pay", "card", "uncard", "recharge", "create", "token", "webhook"):
            return self.faults.recent("gateway_pg", "stripe")
        return False

    def _explain(self, op: Op, a: Answer, miss: Mismatch) -> str:
        lines = [f"{op} answered {a.status} {json.dumps(a.body, sort_keys=True)}"]
        lines.append(f"  the model ({miss.worlds} world(s)) predicted one of:")
        for status, expect, note in miss.predicted:
            differs = _differences(expect, a.body) if status == a.status else "the status"
            lines.append(f"    {status} {_short(expect)} ({note}); differs in: {differs}")
        return "\n".join(lines)

    # ---- requests and their predictions ----

    def request_for(self, lane: Lane, op: Op) -> tuple[Any, ...] | None:
        """(method, path, token, body, predict(world, when), unknown-outcome worlds)."""
        acct = lane.account_id
        p = self.predict
        k = op.kind
        if k == "create":
            (mcc,) = op.args
            card = lane.plan.rate_card
            body = {"account_id": acct, "rate_card": card, "max_concurrent_calls": mcc}
            return (
                "POST",
                "/v1/accounts",
                OPS_TOKEN,
                body,
                (lambda w, when: create_outcomes(w, card, mcc)),
                None,
            )
        if k == "token":
            return (
                "POST",
                f"/v1/accounts/{acct}/tokens",
                OPS_TOKEN,
                {"label": "dashboard"},
                (lambda w, when: token_outcomes(w, lane)),
                None,
            )
        if k == "credit":
            cid, amount, reason = op.args
            body = {"credit_id": cid, "amount_micros": amount, "reason": reason}
            return (
                "POST",
                f"/v1/accounts/{acct}/credits",
                OPS_TOKEN,
                body,
                (lambda w, when: p.credit(w, cid, amount, reason, when)),
                None,
            )
        if k == "debit":
            item, rid, number = op.args
            path, body, extra, fp = debit_request(acct, item, rid, number)
            return (
                "POST",
                path,
                SWITCH_TOKEN,
                body,
                (lambda w, when: p.debit(w, item, rid, fp, when, extra)),
                None,
            )
        if k == "reserve":
            call_id, direction = op.args
            body = {"account_id": acct, "call_id": call_id, "direction": direction}
            return (
                "POST",
                "/v1/calls",
                SWITCH_TOKEN,
                body,
                (lambda w, when: p.reserve(w, call_id, direction, when)),
                None,
            )
        if k == "extend":
            call_id, extend_id = op.args
            body = {"account_id": acct}
            if extend_id is not None:
                body["extend_id"] = extend_id
            return (
                "POST",
                f"/v1/calls/{_q(call_id)}/extend",
                SWITCH_TOKEN,
                body,
                (lambda w, when: p.extend(w, call_id, extend_id, when)),
                None,
            )
        if k == "commit":
            call_id, spec = op.args
            duration = commit_duration(lane.model.one(), call_id, spec)
            body = {"account_id": acct, "duration_seconds": duration}
            return (
                "POST",
                f"/v1/calls/{_q(call_id)}/commit",
                SWITCH_TOKEN,
                body,
                (lambda w, when: p.commit(w, call_id, duration, when)),
                None,
            )
        if k == "release":
            (call_id,) = op.args
            return (
                "POST",
                f"/v1/calls/{_q(call_id)}/release",
                SWITCH_TOKEN,
                {"account_id": acct},
                (lambda w, when: p.release(w, call_id, when)),
                None,
            )
        if k == "get":
            (role,) = op.args
            token = self._token(lane, role)
            if token is None:
                return None
            return (
                "GET",
                f"/v1/accounts/{acct}",
                token,
                None,
                (lambda w, when: p.get_account(w)),
                None,
            )
        if k in ("pay", "card", "uncard", "recharge"):
            return self._customer_request(lane, op)
        if k == "bad":
            return self._bad_request(lane, op)
        if k == "webhook":
            return None  # run by run_webhook (it needs Stripe's own objects first)
        raise AssertionError(k)

    def _token(self, lane: Lane, role: str) -> str | None:
        if role == "ops":
            return OPS_TOKEN
        if role == "switch":
            return SWITCH_TOKEN
        return lane.token

    def _customer_request(self, lane: Lane, op: Op) -> tuple[Any, ...] | None:
        acct = lane.account_id
        p = self.predict
        role = op.args[-1]
        token = self._token(lane, role)
        if token is None:
            return None

        def as_role(fn: Callable[[State, Window], list[Outcome]]) -> Callable[..., list[Outcome]]:
            # Payments, the card and recharge settings belong to the customer.
            if role == "ops" and "ops_role" not in self.limits.waived:
                return lambda w, when: [Outcome(403, error("forbidden"), None, "ops role")]
            return fn

        if op.kind == "pay":
            pid, amount, _ = op.args
            body = {"payment_id": pid, "amount_micros": amount}
            return (
                "POST",
                f"/v1/accounts/{acct}/payments",
                token,
                body,
                as_role(lambda w, when: p.pay_now(w, pid, amount, when)),
                (lambda w: p.pay_now_unknown(w, pid, amount)),
            )
        if op.kind == "card":
            pm, _ = op.args
            body = {"payment_method_id": pm}
            known = {"pm_card_visa": VISA, "pm_card_chargeCustomerFail": FAILING}.get(pm)

            def card(w: State, when: Window) -> list[Outcome]:
                if known is None:
                    if not w.exists:
                        return [Outcome(404, error("unknown_account"), None)]
                    return [Outcome(422, error("invalid_request", field="payment_method_id"), None)]
                return p.put_card(w, pm, known)

            return "PUT", f"/v1/accounts/{acct}/card", token, body, as_role(card), None
        if op.kind == "uncard":
            return (
                "DELETE",
                f"/v1/accounts/{acct}/card",
                token,
                None,
                as_role(lambda w, when: p.delete_card(w)),
                None,
            )
        if op.kind == "recharge":
            settings, _ = op.args
            return (
                "PUT",
                f"/v1/accounts/{acct}/recharge",
                token,
                settings,
                as_role(lambda w, when: p.recharge_settings(w, settings)),
                None,
            )
        raise AssertionError(op.kind)

    def _bad_request(self, lane: Lane, op: Op) -> tuple[Any, ...] | None:
        """A request the README says to refuse, and the exact refusal."""
        (variant,) = op.args
        acct = lane.account_id
        if variant == "unknown_call":
            body = {"account_id": acct, "duration_seconds": 5}
            return (
                "POST",
                "/v1/calls/nosuchcall/commit",
                SWITCH_TOKEN,
                body,
                lambda w, when: self.predict.commit(w, "nosuchcall", 5, when),
                None,
            )
        if variant == "other_customer":
            if lane.token is None:
                return None
            other = self.lanes[(lane.plan.index + 1) % len(self.lanes)]
            method, path, token, body = "GET", f"/v1/accounts/{other.account_id}", lane.token, None
            status, code, details = 403, "forbidden", {}
        else:
            method, path, token, body, status, code, details = BAD_REQUESTS[variant](acct)

        def refused(w: State, when: Window) -> list[Outcome]:
            out = [Outcome(status, error(code, **details), None, variant)]
            if variant == "bad_token":
                # Every lane repeats one forged token: past the per-prefix limit of
                # failed authentications it is refused before it is looked at.
                out.append(Outcome(429, error("too_many_auth_failures"), None, "limited"))
            return out

        return method, path, token, body, refused, None

    # ---- concurrency on one account ----

    async def run_contention(self, idx: int, item: str, n: int, batch: int) -> None:
        """n different debits of one item at once on one account: exactly as many
        succeed as the available balance pays for, in some serial order (their
        seqs), and the rest are refused with what was left."""
        lane = next(
            (
                self.lanes[(idx + k) % len(self.lanes)]
                for k in range(len(self.lanes))
                if _quiet(self.lanes[(idx + k) % len(self.lanes)])
            ),
            None,
        )
        if lane is None:
            return
        self.stats.contention_steps += 1
        reqs = []
        for j in range(n):
            rid = f"k{batch}x{j}"
            path, body, extra, fp = debit_request(lane.account_id, item, rid, "+15550000009")
            reqs.append((Op("debit", (item, rid, "+15550000009")), path, body, extra, fp))
        answers = await asyncio.gather(
            *(self.http("POST", path, SWITCH_TOKEN, body) for _, path, body, _, _ in reqs)
        )
        self.stats.steps += n
        for (op, *_), a in zip(reqs, answers, strict=True):
            self._record(lane, op, a, "(contention)")
        if any(a.status not in (200, 402) for a in answers):
            for (op, _, _, extra, fp), a in zip(reqs, answers, strict=True):
                await self.check_answer(
                    lane, op, a, self._debit_predict(item, op.args[1], fp, extra), None, 0
                )
            return
        order = sorted(
            zip(reqs, answers, strict=True),
            key=lambda ra: (ra[1].status != 200, ra[1].body.get("seq", 0)),
        )
        for (op, _, _, extra, fp), a in order:
            pred = self._debit_predict(item, op.args[1], fp, extra)
            miss = lane.model.observe(
                lambda w2, pred=pred, a=a: pred(w2, a.when), a.status, a.body, a.when.hi_ms
            )
            if miss is not None:
                raise self.fail(
                    "concurrency",
                    lane,
                    f"{n} concurrent {item} debits: no serial order explains the answers "
                    f"(at {op}: {self._explain(op, a, miss)})",
                )

    def _debit_predict(
        self, item: str, rid: str, fp: str, extra: dict[str, Any]
    ) -> Callable[[State, Window], list[Outcome]]:
        return lambda w, when: self.predict.debit(w, item, rid, fp, when, extra)

    async def run_dupes(self, idx: int, n: int, op: Op) -> None:
        """The same request n times at once: one effect, n identical answers."""
        lane = self.lanes[idx]
        req = self.request_for(lane, op)
        if req is None:
            return
        method, path, token, body, predict, unknown = req
        self.stats.duplicate_steps += 1
        answers = await asyncio.gather(*(self.http(method, path, token, body) for _ in range(n)))
        self.stats.steps += n
        for a in answers:
            self._record(lane, op, a, "(duplicate)")
        clean = [a for a in answers if a.status not in (0, 503)]
        if len({_same_answer(op, a) for a in clean}) > 1:
            raise self.fail(
                "duplicates",
                lane,
                f"{n} identical {op} at once got different answers: "
                + "; ".join(f"{a.status} {_short(a.body)}" for a in clean[:4]),
            )
        first = clean[0] if clean else answers[0]
        await self.check_answer(lane, op, first, predict, unknown, 0)

    # ---- webhooks crafted as Stripe would send them ----

    async def run_webhook(self, lane: Lane, op: Op) -> None:
        (variant,) = op.args
        if not lane.payment_intents:
            return
        assert self.world.stripe is not None
        pi_id = lane.payment_intents[-1]
        assert self.session is not None
        async with self.session.get(
            f"{self.world.stripe.url}/v1/payment_intents/{pi_id}",
            headers={"Authorization": f"Bearer {self.world.settings.stripe_api_key}"},  # type: ignore[union-attr]
        ) as r:
            intent = await r.json()
        self.event_counter += 1
        kind = (
            "payment_intent.payment_failed"
            if variant == "failed_after_succeeded"
            else ("payment_intent.succeeded")
        )
        created = int(time.time()) - (3600 if variant == "stale" else 0)
        event_id = f"evt_{self.ns}_{self.event_counter}"
        payload = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "type": kind,
                "created": created,
                "data": {"object": intent},
            }
        ).encode()
        secret = WEBHOOK_SECRET if variant != "bad_signature" else "whsec_wrong"
        sig = hmac.new(secret.encode(), b"%d." % created + payload, hashlib.sha256).hexdigest()
        a = await self.http(
            "POST",
            "/v1/stripe/webhook",
            raw=payload,
            headers={
                "Stripe-Signature": f"t={created},v1={sig}",
                "Content-Type": "application/json",
            },
        )
        self._record(lane, op, a)
        if variant in ("bad_signature", "stale"):
            expect = lambda w, when: [Outcome(400, error("webhook_rejected"), None)]  # noqa: E731
        else:
            # Already credited: a new event for the same charge changes nothing.
            expect = lambda w, when: [  # noqa: E731
                Outcome(200, {"received": True, "event_id": event_id}, None, "no new money")
            ]
        await self.check_answer(lane, op, a, expect, None, RETRIES_MAX)


def _message(acct: str, message_id: str) -> dict[str, Any]:
    return {"account_id": acct, "message_id": message_id, "direction": "outbound"}


# variant -> account id -> (method, path, token, body, status, error code, details)
BAD_REQUESTS: dict[str, Callable[[str], tuple[Any, ...]]] = {
    "unknown_account": lambda a: (
        "POST",
        "/v1/messages",
        SWITCH_TOKEN,
        _message(f"{a}-nosuch", "x1"),
        404,
        "unknown_account",
        {},
    ),
    "wrong_role": lambda a: (
        "POST",
        "/v1/messages",
        OPS_TOKEN,
        _message(a, "x2"),
        403,
        "forbidden",
        {},
    ),
    "no_token": lambda a: (
        "POST",
        "/v1/ring-through-attempts",
        None,
        {"account_id": a, "attempt_id": "x3"},
        401,
        "unauthorized",
        {},
    ),
    "bad_token": lambda a: (
        "POST",
        "/v1/ring-through-attempts",
        "not-a-token",
        {"account_id": a, "attempt_id": "x4"},
        401,
        "unauthorized",
        {},
    ),
    "negative_credit": lambda a: (
        "POST",
        f"/v1/accounts/{a}/credits",
        OPS_TOKEN,
        {"credit_id": "neg1", "amount_micros": -5, "reason": "x"},
        422,
        "invalid_request",
        {"field": "amount_micros"},
    ),
    "bad_request_id": lambda a: (
        "POST",
        "/v1/messages",
        SWITCH_TOKEN,
        _message(a, "bad|id"),
        422,
        "invalid_request",
        {"field": "message_id"},
    ),
    "zero_duration": lambda a: (
        "POST",
        "/v1/calls/zz1/commit",
        SWITCH_TOKEN,
        {"account_id": a, "duration_seconds": 0},
        422,
        "invalid_request",
        {"field": "duration_seconds"},
    ),
    "bad_direction": lambda a: (
        "POST",
        "/v1/calls",
        SWITCH_TOKEN,
        {"account_id": a, "call_id": "zz2", "direction": "sideways"},
        422,
        "invalid_request",
        {"field": "direction"},
    ),
    "huge_duration": lambda a: (
        "POST",
        "/v1/calls/zz3/commit",
        SWITCH_TOKEN,
        {"account_id": a, "duration_seconds": 10**9},
        422,
        "invalid_request",
        {"field": "duration_seconds"},
    ),
}


def _same_answer(op: Op, a: Answer) -> str:
    """What identical requests at once must agree on. A declined payment is
    `card_declined` to the request that saw Stripe's answer and `payment_failed` to
    a twin arriving after it was recorded (the README's rule for a repeat);
    neither credits anything."""
    if op.kind == "pay" and a.status == 402 and a.code in ("card_declined", "payment_failed"):
        return "402 declined"
    return json.dumps([a.status, a.body], sort_keys=True)


def _quiet(lane: Lane) -> bool:
    """One known state, no open call and no recharge: nothing moves it meanwhile."""
    worlds = lane.model.worlds
    w = worlds[0]
    return (
        len(worlds) == 1
        and w.exists
        and not w.recharge_enabled
        and not w.recharge_pending
        and not any(c.state == "open" for c in w.calls.values())
    )


# ---- prediction helpers that need request details ----


def create_outcomes(w: State, card: dict[str, int], mcc: int) -> list[Outcome]:
    if w.exists:
        if w.rate_card == card and w.max_concurrent_calls == mcc:
            return [Outcome(201, {"account_id": w.account_id, "seq": w.seq}, None, "again")]
        return [Outcome(409, error("account_exists"), None)]
    new = w.clone()
    new.exists, new.rate_card, new.max_concurrent_calls = True, dict(card), mcc
    body = {
        "account_id": w.account_id,
        "balance_micros": 0,
        "reserved_micros": 0,
        "available_micros": 0,
        "seq": 0,
        "rate_card": card,
        "max_concurrent_calls": mcc,
        "open_calls": 0,
        "card": None,
    }
    return [Outcome(201, body, new, "created")]


def token_outcomes(w: State, lane: Lane) -> list[Outcome]:
    if not w.exists:
        return [Outcome(404, error("unknown_account"), None)]

    def bind(body: dict[str, Any]) -> None:
        lane.token = body["token"]

    return [Outcome(201, {"account_id": w.account_id, "token": model.ANY}, None, "token", bind)]


def debit_request(
    acct: str, item: str, rid: str, number: str
) -> tuple[str, dict[str, Any], dict[str, Any], str]:
    if item.startswith("sms_"):
        direction = item[4:]
        body = {"account_id": acct, "message_id": rid, "direction": direction}
        return "/v1/messages", body, {"message_id": rid}, direction
    if item == "ring_through_attempt":
        return (
            "/v1/ring-through-attempts",
            {"account_id": acct, "attempt_id": rid},
            {"attempt_id": rid},
            "",
        )
    name = "purchase_id" if item == "number_purchase" else "renewal_id"
    path = "/v1/numbers/purchases" if item == "number_purchase" else "/v1/numbers/renewals"
    body = {"account_id": acct, name: rid, "number": number}
    return path, body, {name: rid, "number": number}, number


def commit_duration(w: State, call_id: str, spec: tuple[Any, ...]) -> int:
    c = w.calls.get(call_id)
    granted = c.granted_s if c is not None else 4
    kind, value = spec
    if kind == "frac":
        return max(1, round(granted * float(value)))
    if kind == "over":
        return granted + int(value)
    return int(value)


def _q(call_id: str) -> str:
    return urllib.parse.quote(call_id, safe="")


def _differences(expect: Any, got: Any, path: str = "") -> str:
    """The fields where an answer differs from a prediction, as path=got (wanted)."""
    if isinstance(expect, dict) and isinstance(got, dict):
        out = []
        for k, v in expect.items():
            if k not in got:
                out.append(f"{path}{k} missing")
            elif not model.matches(v, got[k]):
                out.append(_differences(v, got[k], f"{path}{k}."))
        return ", ".join(out)
    return f"{path.rstrip('.')}={got!r} (wanted {expect!r})"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return text if len(text) < 400 else text[:400] + "..."


def rng_for(seed: int, *parts: Any) -> random.Random:
    return random.Random(":".join([str(seed), *map(str, parts)]))
