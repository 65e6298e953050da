"""The plan: what the simulation will do, drawn from one seed and nothing else.

A plan is a sequence of batches. Each batch holds, for some accounts (lanes),
a few operations run one after the other on that account, all lanes at once;
and maybe a fault (before the batch, or during it) and global steps (a sweep, a
deep audit, hostile input). The plan never looks at answers, so the same seed
gives the same operations; what an operation sends may depend on what the model
learned (a commit's duration is a fraction of the seconds actually granted).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

MICROS = 1_000_000
PHONE_NUMBERS = ("+15550000001", "+15550000002", "+442071234567", "+4930123456")
ITEMS = ("sms_outbound", "sms_inbound", "ring_through_attempt", "number_purchase", "number_renewal")
# Ids a switch might send: SIP Call-IDs carry '@' and ':', and some start with
# characters a spreadsheet evaluates (the activity export must neutralise them).
ID_STYLES = ("plain", "sip", "formula")


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}{self.args!r}"

    def as_json(self) -> list[Any]:
        return [self.kind, list(self.args)]

    @classmethod
    def from_json(cls, data: list[Any]) -> Op:
        return cls(data[0], tuple(_tuples(a) for a in data[1]))


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


@dataclasses.dataclass
class Fault:
    kind: str
    params: dict[str, Any]
    # Seconds after the batch starts (None: before the batch, between steps).
    during_s: float | None = None

    def __str__(self) -> str:
        when = "between steps" if self.during_s is None else f"during, at +{self.during_s:.2f}s"
        return f"{self.kind}({', '.join(f'{k}={v}' for k, v in self.params.items())}) {when}"


@dataclasses.dataclass
class Batch:
    index: int
    lanes: dict[int, list[Op]]
    fault: Fault | None = None
    globals: list[Op] = dataclasses.field(default_factory=list)

    def steps(self) -> int:
        return (
            sum(len(ops) for ops in self.lanes.values())
            + len(self.globals)
            + (1 if self.fault else 0)
        )


@dataclasses.dataclass
class Profile:
    """How big and how hostile a run is."""

    name: str
    accounts: int = 40
    lanes_per_batch: int = 20
    ops_per_lane_max: int = 3
    fault_every: int = 6  # a fault about every this many batches (0: none)
    sweep_every: int = 8
    audit_every_s: float = 30.0
    fuzz_every: int = 40
    fuzz_cases: int = 120
    contention_every: int = 12
    steps: int = 8_000
    minutes: float = 0.0  # when set, run this long instead of a step count
    faults: tuple[str, ...] = (
        "writer_kill",
        "writer_kill_in_outage",
        "pg_outage",
        "redis_restart",
        "redis_loss",
        "gateway_kill",
        "gateway_crash",
        "worker_kill",
        "stripe_lose",
        "stripe_5xx",
        "smtp_down",
    )


PROFILES = {
    "ci": Profile("ci"),
    "long": Profile("long", accounts=64, lanes_per_batch=24, minutes=30.0, steps=0),
    "quick": Profile(
        "quick", accounts=16, lanes_per_batch=8, steps=600, audit_every_s=10.0, fuzz_every=10
    ),
}


# ---- accounts ----

KINDS = ("cheap", "cheap", "cheap", "zero", "payer", "payer", "decliner", "nocard")


@dataclasses.dataclass
class AccountPlan:
    index: int
    kind: str
    rate_card: dict[str, int]
    max_concurrent_calls: int
    initial_micros: int


def _rate_card(rng: random.Random, kind: str) -> dict[str, int]:
    inc, minimum = rng.choice([(1, 0), (1, 1), (6, 6), (6, 0), (2, 0), (30, 30), (1, 10), (3, 0)])
    if kind in ("payer", "decliner"):
        return {
            "call_outbound_per_minute_micros": rng.choice([MICROS, 3 * MICROS, 12 * MICROS]),
            "call_inbound_per_minute_micros": rng.choice([0, MICROS // 2, 2 * MICROS]),
            "call_increment_seconds": inc,
            "call_minimum_seconds": minimum,
            "sms_outbound_micros": rng.choice([10_000, 250_000]),
            "sms_inbound_micros": rng.choice([0, 5_000]),
            "ring_through_attempt_micros": rng.choice([2_000, 100_000]),
            "number_purchase_micros": rng.randint(2, 7) * MICROS,
            "number_renewal_micros": rng.randint(1, 5) * MICROS,
        }
    return {
        "call_outbound_per_minute_micros": rng.choice([0, 7_000, 10_000, 60_000, 999_999]),
        "call_inbound_per_minute_micros": rng.choice([0, 5_000, 13_000]),
        "call_increment_seconds": inc,
        "call_minimum_seconds": minimum,
        "sms_outbound_micros": rng.choice([0, 7_500, 9_999]),
        "sms_inbound_micros": rng.choice([0, 1_000]),
        "ring_through_attempt_micros": rng.choice([0, 2_000, 3_333]),
        "number_purchase_micros": rng.choice([0, 1_000_000, 250_000]),
        "number_renewal_micros": rng.choice([1, 1_000_000, 400_000]),
    }


def plan_accounts(rng: random.Random, count: int) -> list[AccountPlan]:
    out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        initial = {
            "cheap": rng.choice([30_000, 200_000, 5 * MICROS]),
            "zero": 0,
            "payer": rng.choice([20 * MICROS, 60 * MICROS]),
            "decliner": rng.choice([15 * MICROS, 40 * MICROS]),
            "nocard": rng.choice([MICROS, 10 * MICROS]),
        }[kind]
        out.append(
            AccountPlan(i, kind, _rate_card(rng, kind), rng.choice([0, 0, 0, 2, 3]), initial)
        )
    return out


# ---- one lane's generator ----


class Lane:
    """What one account does next: plan-level memory of ids and calls only."""

    def __init__(self, acct: AccountPlan, rng: random.Random) -> None:
        self.acct = acct
        self.rng = rng
        self.counter = 0
        self.history: list[tuple[int, Op]] = []  # (batch, op) of retryable ops
        self.calls: list[str] = []
        self.open_calls: list[str] = []
        self.scheduled: list[tuple[int, Op]] = []  # (due batch, op)
        self.payment_ids: list[str] = []
        self.credit_ids: list[str] = ["initial"]

    def new_id(self, prefix: str) -> str:
        self.counter += 1
        style = self.rng.choice(ID_STYLES) if self.rng.random() < 0.15 else "plain"
        if prefix == "call" and self.rng.random() < 0.02:
            style = "slash"
        base = f"{prefix}{self.acct.index}x{self.counter}"
        if style == "sip":
            return f"{base}@sip.example.net:5060"
        if style == "slash":
            return f"{base}/1@sip.example.net"  # '/' is legal in a SIP Call-ID
        if style == "formula":
            return self.rng.choice(["=", "+", "-", "@"]) + base + "+1"
        return base

    def setup(self) -> list[Op]:
        a = self.acct
        ops = [Op("create", (a.max_concurrent_calls,)), Op("token")]
        if a.initial_micros:
            ops.append(Op("credit", ("initial", a.initial_micros, "initial funds")))
        if a.kind == "payer":
            ops.append(Op("card", ("pm_card_visa", "customer")))
            ops.append(Op("recharge", (self._recharge_settings(True), "customer")))
        elif a.kind == "decliner":
            ops.append(Op("card", ("pm_card_chargeCustomerFail", "customer")))
            ops.append(Op("recharge", (self._recharge_settings(True), "customer")))
        return ops

    def _recharge_settings(self, valid: bool) -> dict[str, Any]:
        rng = self.rng
        amount = rng.choice([51, 55, 60, 75]) * MICROS
        threshold = rng.choice([10, 15, 25, 40]) * MICROS
        s = {
            "amount_micros": amount,
            "threshold_micros": threshold,
            "failure_email": f"billing{self.acct.index}@example.com",
            "enabled": True,
        }
        if not valid:
            field, value = rng.choice(
                [
                    ("amount_micros", 50 * MICROS),  # must be greater than 50 USD
                    ("amount_micros", 5_000_001_000_000),  # beyond any sane cap
                    ("amount_micros", 60 * MICROS + 1),  # not whole cents
                    ("threshold_micros", 9_999_999),  # below 10 USD
                    ("threshold_micros", 1_000 * MICROS),  # one recharge cannot lift above it
                    ("failure_email", "not an address"),
                    ("enabled", "yes"),
                    ("amount_micros", 60.5),
                ]
            )
            s[field] = value
        elif rng.random() < 0.2:
            s["enabled"] = False
        return s

    def next_ops(self, batch: int, count: int) -> list[Op]:
        due = [op for when, op in self.scheduled if when <= batch]
        self.scheduled = [(w, op) for w, op in self.scheduled if w > batch]
        ops = due[:count]
        self.scheduled += [(batch + 1, op) for op in due[count:]]
        while len(ops) < count:
            ops.append(self._one(batch))
        return ops

    def _schedule(self, after: int, op: Op, batch: int) -> None:
        self.scheduled.append((batch + after, op))

    def _retryable(self, op: Op, batch: int) -> Op:
        self.history.append((batch, op))
        if len(self.history) > 200:
            self.history = self.history[-200:]
        return op

    def _one(self, batch: int) -> Op:
        rng = self.rng
        kind = self.acct.kind
        weights = {
            "debit": 30,
            "call": 22,
            "retry": 10,
            "conflict": 2,
            "credit": 5 if kind in ("cheap", "zero", "nocard") else 2,
            "get": 6,
            "bad": 3,
            "pay": 6 if kind in ("payer", "decliner", "nocard") else 0,
            "card": 2 if kind in ("payer", "decliner", "nocard") else 0,
            "recharge": 2 if kind in ("payer", "decliner", "nocard") else 0,
            "webhook": 3 if kind == "payer" else 0,
        }
        choice = rng.choices(list(weights), list(weights.values()))[0]
        if choice == "debit":
            if kind in ("payer", "decliner"):
                item = rng.choice(["number_purchase", "number_renewal", "sms_outbound"])
            else:
                item = rng.choice(ITEMS)
            return self._retryable(self._debit(item, self.new_id("m")), batch)
        if choice == "call":
            return self._call(batch)
        if choice == "retry" and self.history:
            # Recent (inside the idempotency window) or old (after it).
            pool = self.history[-6:] if rng.random() < 0.7 else self.history
            return rng.choice(pool)[1]
        if choice == "conflict" and self.history:
            old = rng.choice(self.history)[1]
            if old.kind == "debit" and old.args[0] in ("sms_outbound", "sms_inbound"):
                other = "sms_inbound" if old.args[0] == "sms_outbound" else "sms_outbound"
                return Op("debit", (other, old.args[1], old.args[2]))
            if old.kind == "credit":
                return Op("credit", (old.args[0], old.args[1] + 1, old.args[2]))
            if old.kind == "pay":
                return Op("pay", (old.args[0], old.args[1] + 10_000, old.args[2]))
        if choice == "credit":
            cid = self.new_id("c")
            self.credit_ids.append(cid)
            amount = rng.choice([1, 7_500, 250_000, 3 * MICROS])
            return self._retryable(
                Op("credit", (cid, amount, rng.choice(["top up", "=1+1"]))), batch
            )
        if choice == "get":
            return Op("get", (rng.choice(["switch", "ops", "customer"]),))
        if choice == "bad":
            return Op("bad", (rng.choice(BAD_REQUESTS),))
        if choice == "pay":
            if rng.random() < 0.05 and self.credit_ids:
                # A payment id that is already an ops credit's id.
                pid = rng.choice(self.credit_ids)
            else:
                pid = self.new_id("p")
            self.payment_ids.append(pid)
            amount = rng.choice([MICROS, 5 * MICROS, 20 * MICROS, 1_234_560_000])
            if rng.random() < 0.05:
                amount = rng.choice([MICROS + 1, 0, 10_000_000_010_000])
            role = "ops" if rng.random() < 0.1 else "customer"
            return self._retryable(Op("pay", (pid, amount, role)), batch)
        if choice == "card":
            roll = rng.random()
            role = "ops" if rng.random() < 0.1 else "customer"
            if roll < 0.35:
                return Op("uncard", (role,))
            pm = rng.choice(
                ["pm_card_visa", "pm_card_visa", "pm_card_chargeCustomerFail", "pm_nonexistent1"]
            )
            if kind == "payer" and pm == "pm_card_chargeCustomerFail":
                pm = "pm_card_visa"
            return Op("card", (pm, role))
        if choice == "recharge":
            role = "ops" if rng.random() < 0.1 else "customer"
            return Op("recharge", (self._recharge_settings(rng.random() < 0.7), role))
        if choice == "webhook":
            return Op("webhook", (rng.choice(WEBHOOK_VARIANTS),))
        return Op("get", ("ops",))

    def dupe_op(self) -> Op:
        """A new request, to be sent several times at once."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return self._debit(rng.choice(ITEMS), self.new_id("d"))
        if roll < 0.6:
            cid = self.new_id("dc")
            self.credit_ids.append(cid)
            return Op("credit", (cid, rng.choice([1, 5_000, 2 * MICROS]), "top up"))
        if roll < 0.8 or self.acct.kind not in ("payer", "decliner"):
            call_id = self.new_id("dcall")
            self._schedule(1, Op("commit", (call_id, ("frac", 0.5))), 0)
            return Op("reserve", (call_id, "outbound"))
        pid = self.new_id("dp")
        self.payment_ids.append(pid)
        return Op("pay", (pid, 5 * MICROS, "customer"))

    def _debit(self, item: str, rid: str) -> Op:
        number = self.rng.choice(PHONE_NUMBERS) if item.startswith("number_") else ""
        return Op("debit", (item, rid, number))

    def _call(self, batch: int) -> Op:
        rng = self.rng
        if self.open_calls and rng.random() < 0.5:
            call_id = rng.choice(self.open_calls)
            return Op("extend", (call_id, self.new_id("e") if rng.random() < 0.5 else None))
        call_id = self.new_id("call")
        self.calls.append(call_id)
        direction = rng.choice(["outbound", "outbound", "inbound"])
        fate = rng.choices(
            ["commit", "extend_commit", "release", "forget", "late_commit", "overrun"],
            [45, 15, 12, 10, 8, 10],
        )[0]
        if fate in ("commit", "overrun"):
            spec = ("frac", rng.choice([0.1, 0.5, 1.0])) if fate == "commit" else ("over", 7)
            self._schedule(rng.randint(1, 3), Op("commit", (call_id, spec)), batch)
        elif fate == "extend_commit":
            self.open_calls.append(call_id)
            self._schedule(1, Op("extend", (call_id, self.new_id("e"))), batch)
            self._schedule(2, Op("commit", (call_id, ("frac", rng.random()))), batch)
        elif fate == "release":
            self._schedule(rng.randint(1, 2), Op("release", (call_id,)), batch)
        elif fate == "late_commit":
            self._schedule(rng.randint(40, 80), Op("commit", (call_id, ("frac", 0.6))), batch)
        # "forget": the sweeper expires it
        if fate != "extend_commit" and call_id in self.open_calls:
            self.open_calls.remove(call_id)
        op = Op("reserve", (call_id, direction))
        if rng.random() < 0.1:
            # The same reserve again later (a switch retry of the set-up).
            self._schedule(rng.randint(1, 30), op, batch)
        return op


BAD_REQUESTS = (
    "unknown_account",
    "wrong_role",
    "no_token",
    "bad_token",
    "other_customer",
    "negative_credit",
    "bad_request_id",
    "zero_duration",
    "unknown_call",
    "bad_direction",
    "huge_duration",
)
WEBHOOK_VARIANTS = ("replay_succeeded", "failed_after_succeeded", "bad_signature", "stale")


# ---- the whole plan ----


class Plan:
    """Batches drawn from the seed, one after the other."""

    def __init__(self, seed: int, profile: Profile) -> None:
        self.seed = seed
        self.profile = profile
        self.rng = random.Random(seed)
        self.accounts = plan_accounts(self.rng, profile.accounts)
        self.lanes = [Lane(a, random.Random(f"{seed}:{a.index}")) for a in self.accounts]
        self.batch_index = 0

    def first_batch(self) -> Batch:
        self.batch_index = 1
        return Batch(0, {lane.acct.index: lane.setup() for lane in self.lanes})

    def next_batch(self) -> Batch:
        rng, p = self.rng, self.profile
        i = self.batch_index
        self.batch_index += 1
        chosen = rng.sample(range(len(self.lanes)), min(p.lanes_per_batch, len(self.lanes)))
        lanes = {
            idx: self.lanes[idx].next_ops(i, rng.randint(1, p.ops_per_lane_max)) for idx in chosen
        }
        batch = Batch(i, lanes)
        if p.fault_every and p.faults and rng.random() < 1 / p.fault_every:
            batch.fault = self._fault(rng)
        if p.sweep_every and i % p.sweep_every == 0:
            batch.globals.append(Op("sweep"))
        if p.contention_every and i % p.contention_every == 0:
            lane = rng.randrange(len(self.lanes))
            batch.globals.append(Op("contention", (lane, rng.choice(ITEMS), rng.randint(5, 20))))
        if p.contention_every and i % p.contention_every == p.contention_every // 2:
            lane = rng.randrange(len(self.lanes))
            inner = self.lanes[lane].dupe_op()
            batch.globals.append(Op("dupes", (lane, rng.randint(3, 8), inner.kind, inner.args)))
        if p.fuzz_every and i % p.fuzz_every == 0:
            batch.globals.append(Op("fuzz", (rng.randrange(2**31), p.fuzz_cases)))
        return batch

    def _fault(self, rng: random.Random) -> Fault:
        kind = rng.choice(self.profile.faults)
        during = None if rng.random() < 0.4 else rng.uniform(0.0, 0.15)
        params: dict[str, Any] = {}
        if kind == "writer_kill":
            params["down_s"] = rng.choice([0.0, 0.3, 1.5])
        elif kind == "writer_kill_in_outage":
            params["down_s"] = rng.choice([0.5, 1.0])
        elif kind == "pg_outage":
            params["target"] = rng.choice(["gateway_pg", "writer_pg", "worker_pg"])
            params["down_s"] = rng.choice([0.3, 1.0, 3.0])
        elif kind == "redis_restart":
            params["down_s"] = rng.choice([0.0, 0.2, 0.8])
        elif kind == "redis_loss":
            params["recovery"] = rng.choice(["rebuild", "gateway_restart"])
            during = None
        elif kind == "gateway_kill":
            params["gateway"] = rng.randrange(2)
            params["down_s"] = rng.choice([0.0, 0.5, 2.0])
        elif kind == "worker_kill":
            params["point"] = rng.choice(
                [
                    "waiting_for_stripe",
                    "charge.charged",
                    "charge.recorded",
                    "charge.credited",
                    "recharge.request_read",
                ]
            )
            during = None
        elif kind == "gateway_crash":
            params["gateway"] = rng.randrange(2)
            params["point"] = rng.choice(["charge.charged", "charge.recorded", "charge.credited"])
            during = None
        elif kind in ("stripe_lose", "stripe_5xx"):
            params["count"] = rng.randint(1, 4)
        elif kind == "smtp_down":
            params["down_s"] = rng.choice([1.0, 5.0])
        return Fault(kind, params, during)
