"""Hostile input: a property-based fuzzer over the gateway's own /openapi.json
(schemathesis generates the requests, valid and invalid, and each is sent with
one of every role's tokens, none, or a forged one), plus hand-written cases a
careful attacker tries. Every answer must be a status the document lists for
that operation, never a 5xx, an error body {"error", "message"}, and an answer
in 4xx must change nothing of the accounts it names (their Redis hash and the
records its ids would create).

The fuzz accounts are their own (not in the model): zero call prices, no
recharge, so nothing changes them in the background while a case runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings

from metering.keys import AccountKeys
from sim.driver import Driver, SimFailure
from sim.known import KNOWN_OPEN
from sim.world import OPS_TOKEN, SWITCH_TOKEN

FUZZ_ACCOUNTS = 4
# Hash fields a refused request must leave as they were.
WATCHED_FIELDS = (
    "balance",
    "reserved",
    "seq",
    "recharge_enabled",
    "recharge_amount_micros",
    "recharge_threshold_micros",
    "recharge_failure_email",
    "card_payment_method_id",
    "max_concurrent_calls",
)
# Id fields of a body and the idempotency record each would create.
ID_KINDS = {
    "message_id": "message",
    "attempt_id": "attempt",
    "purchase_id": "purchase",
    "renewal_id": "renewal",
    "credit_id": "credit",
}
FREE_CALLS = {
    "call_outbound_per_minute_micros": 0,
    "call_inbound_per_minute_micros": 0,
    "call_increment_seconds": 6,
    "call_minimum_seconds": 0,
    "sms_outbound_micros": 7_500,
    "sms_inbound_micros": 1_000,
    "ring_through_attempt_micros": 2_000,
    "number_purchase_micros": 1_000_000,
    "number_renewal_micros": 1_000_000,
}
# Spreadsheet formula starts (OWASP's list for CSV exports).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclasses.dataclass
class FuzzAccount:
    account_id: str
    token: str


class Hostile:
    def __init__(self, d: Driver) -> None:
        self.d = d
        self.accounts: list[FuzzAccount] = []
        self.operations: list[Any] = []
        self.documented: dict[tuple[str, str], set[int]] = {}

    async def setup(self) -> None:
        import schemathesis

        d = self.d
        for i in range(FUZZ_ACCOUNTS):
            acct = f"{d.ns}-fz{i}"
            r = await d.http(
                "POST", "/v1/accounts", OPS_TOKEN, {"account_id": acct, "rate_card": FREE_CALLS}
            )
            assert r.status == 201, r.body
            r = await d.http(
                "POST",
                f"/v1/accounts/{acct}/credits",
                OPS_TOKEN,
                {"credit_id": "fz", "amount_micros": 50_000_000, "reason": "fuzz"},
            )
            r = await d.http("POST", f"/v1/accounts/{acct}/tokens", OPS_TOKEN, {"label": "fuzz"})
            assert r.status == 201, r.body
            self.accounts.append(FuzzAccount(acct, r.body["token"]))
        doc = await d.http("GET", "/openapi.json")
        assert doc.status == 200
        schema = schemathesis.openapi.from_dict(doc.body)
        for result in schema.get_all_operations():
            op = result.ok()
            self.operations.append(op)
            codes = {int(c) for c in op.definition.raw.get("responses", {}) if c.isdigit()}
            self.documented[(op.method.upper(), op.path)] = codes

    # ---- the fuzzer ----

    def generate(self, seed: int, count: int) -> list[Any]:
        """`count` cases drawn by hypothesis from the document, the same for a seed."""
        import schemathesis

        rng = random.Random(seed)
        cases: list[Any] = []
        per_op = max(1, count // len(self.operations))
        for n, op in enumerate(self.operations):
            mode = (
                schemathesis.GenerationMode.NEGATIVE
                if rng.random() < 0.5
                else schemathesis.GenerationMode.POSITIVE
            )
            strategy = op.as_strategy(generation_mode=mode)
            drawn = _draw(strategy, seed * 1000 + n, per_op)
            cases += drawn[:per_op]
        rng.shuffle(cases)
        return cases[:count]

    async def fuzz(self, seed: int, count: int) -> None:
        cases = await asyncio.to_thread(self.generate, seed, count)
        rng = random.Random(seed)
        lanes = [cases[i :: len(self.accounts)] for i in range(len(self.accounts))]
        await asyncio.gather(
            *(
                self._lane(acct, lane, random.Random(rng.random()))
                for acct, lane in zip(self.accounts, lanes, strict=True)
            )
        )

    async def _lane(self, acct: FuzzAccount, cases: list[Any], rng: random.Random) -> None:
        other = self.accounts[(self.accounts.index(acct) + 1) % len(self.accounts)]
        for case in cases:
            await self._one(case, acct, other, rng)

    async def _one(
        self, case: Any, acct: FuzzAccount, other: FuzzAccount, rng: random.Random
    ) -> None:
        d = self.d
        path_params = dict(case.path_parameters or {})
        if "account_id" in path_params and rng.random() < 0.7:
            path_params["account_id"] = acct.account_id
        body = case.body
        if isinstance(body, dict) and "account_id" in body and rng.random() < 0.7:
            body = {**body, "account_id": acct.account_id}
        token = rng.choice(
            [SWITCH_TOKEN, OPS_TOKEN, acct.token, acct.token, other.token, None, "forged-token"]
        )
        path = case.operation.path
        for name, value in path_params.items():
            path = path.replace("{" + name + "}", _quote(str(value)))
        query = case.query or {}
        if query:
            from urllib.parse import urlencode

            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        raw = None
        headers = {}
        if body is not None and _is_json(body):
            raw = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        method = case.method.upper()
        # Only this lane's account: the others' lanes change theirs meanwhile.
        watched = self._watched_keys(body, [acct])
        before = await self._snapshot(watched)
        a = await d.http(method, path, token, raw=raw, headers=headers)
        d.stats.fuzz_cases += 1
        d.stats.steps += 1
        where = f"fuzz {method} {path} token={'set' if token else 'none'} body={_short(body)}"
        await self._judge(where, (method, case.operation.path), a, before, watched)

    async def _judge(
        self,
        where: str,
        op: tuple[str, str] | None,
        a: Any,
        before: dict[str, Any],
        watched: list[tuple[str, str]],
        expect: set[int] | None = None,
    ) -> None:
        d = self.d
        if a.status == 0:
            raise SimFailure("hostile", f"{where}: no answer ({a.error})")
        if a.status >= 500:
            d.stats.server_errors += 1
            raise SimFailure("5xx", f"{where}: answered {a.status} {a.body}")
        documented = expect or self.documented.get(op or ("", ""), set())
        if op is not None and a.status not in documented and not (200 <= a.status < 300):
            raise SimFailure(
                "hostile",
                f"{where}: answered {a.status} {_short(a.body)}, which the document does not "
                f"list for it ({sorted(documented)})",
            )
        if expect is not None and a.status not in expect:
            raise SimFailure(
                "hostile",
                f"{where}: answered {a.status} {_short(a.body)}, expected {sorted(expect)}",
            )
        if 400 <= a.status < 500:
            if not (
                isinstance(a.body, dict)
                and isinstance(a.body.get("error"), str)
                and isinstance(a.body.get("message"), str)
            ):
                raise SimFailure(
                    "hostile", f"{where}: {a.status} without an error body: {a.body!r}"
                )
            after = await self._snapshot(watched)
            if after != before:
                d.stats.changed_on_4xx += 1
                changed = {
                    k: (before.get(k), after.get(k))
                    for k in set(before) | set(after)
                    if before.get(k) != after.get(k)
                }
                raise SimFailure("hostile", f"{where}: answered {a.status} but changed {changed}")

    def _watched_keys(self, body: Any, accounts: list[FuzzAccount]) -> list[tuple[str, str]]:
        """(kind, key) of what a request could change: the accounts' hashes, and the
        idempotency record or call its ids would create."""
        shard_count = self.d.world.store.settings.shard_count
        out = []
        for acct in accounts:
            keys = AccountKeys(acct.account_id, shard_count)
            out.append(("hash", keys.account))
            if isinstance(body, dict):
                for field, kind in ID_KINDS.items():
                    if isinstance(body.get(field), str):
                        out.append(("key", keys.request(kind, body[field])))
                if isinstance(body.get("call_id"), str):
                    out.append(("key", keys.call(body["call_id"])))
        return out

    async def _snapshot(self, watched: list[tuple[str, str]]) -> dict[str, Any]:
        redis = self.d.world.store.redis
        async with redis.pipeline(transaction=True) as pipe:
            for kind, key in watched:
                if kind == "hash":
                    pipe.hmget(key, *WATCHED_FIELDS)
                else:
                    pipe.exists(key)
            answers = await pipe.execute()
        return {key: answer for (_, key), answer in zip(watched, answers, strict=True)}

    # ---- hand-written cases ----

    async def hand_written(self, rng: random.Random) -> None:
        acct, other = self.accounts[0], self.accounts[1]
        d = self.d
        a_id = acct.account_id
        msg = {"account_id": a_id, "message_id": "hx1", "direction": "outbound"}
        cases: list[tuple[str, str, str, str | None, bytes, dict[str, str], set[int]]] = [
            (
                "huge JSON",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                json.dumps({**msg, "pad": "x" * 2_000_000}).encode(),
                {},
                {413},
            ),
            (
                "deep JSON",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                b"[" * 200_000 + b"]" * 200_000,
                {},
                {400, 413},
            ),
            (
                "duplicate keys",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                (
                    f'{{"account_id": "{other.account_id}", "account_id": "{a_id}", '
                    f'"message_id": "hx2", "direction": "outbound"}}'
                ).encode(),
                {},
                {400},
            ),
            (
                "NaN",
                "POST",
                f"/v1/accounts/{a_id}/credits",
                OPS_TOKEN,
                b'{"credit_id": "hx3", "amount_micros": NaN, "reason": "x"}',
                {},
                {400},
            ),
            (
                "1e400",
                "POST",
                f"/v1/accounts/{a_id}/credits",
                OPS_TOKEN,
                b'{"credit_id": "hx4", "amount_micros": 1e400, "reason": "x"}',
                {},
                {400, 422},
            ),
            (
                "past 2^53",
                "POST",
                f"/v1/accounts/{a_id}/credits",
                OPS_TOKEN,
                b'{"credit_id": "hx5", "amount_micros": 9007199254740993, "reason": "x"}',
                {},
                {422},
            ),
            (
                "past 2^63",
                "POST",
                f"/v1/accounts/{a_id}/credits",
                OPS_TOKEN,
                b'{"credit_id": "hx6", "amount_micros": 9223372036854775809, "reason": "x"}',
                {},
                {400, 422},
            ),
            (
                "negative past 2^63",
                "POST",
                "/v1/calls/hx7/commit",
                SWITCH_TOKEN,
                json.dumps({"account_id": a_id, "duration_seconds": -(2**64)}).encode(),
                {},
                {400, 422},
            ),
            (
                "control character in an id",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                json.dumps({**msg, "message_id": "hx8\u0000\u0007"}).encode(),
                {},
                {422},
            ),
            (
                "newline in an id",
                "POST",
                "/v1/ring-through-attempts",
                SWITCH_TOKEN,
                json.dumps({"account_id": a_id, "attempt_id": "hx9\r\n=1+1"}).encode(),
                {},
                {422},
            ),
            (
                "text/plain",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                json.dumps({**msg, "message_id": "hx10"}).encode(),
                {"Content-Type": "text/plain"},
                {415},
            ),
            (
                "no content type",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                json.dumps({**msg, "message_id": "hx11"}).encode(),
                {"Content-Type": ""},
                {415},
            ),
            (
                "trailing data",
                "POST",
                "/v1/messages",
                SWITCH_TOKEN,
                json.dumps({**msg, "message_id": "hx12"}).encode() + b' {"x": 1}',
                {},
                {400},
            ),
            (
                "a customer paying for another account",
                "POST",
                f"/v1/accounts/{other.account_id}/payments",
                acct.token,
                b'{"payment_id": "hx13", "amount_micros": 5000000}',
                {},
                {403},
            ),
            (
                "a bool for an amount",
                "POST",
                f"/v1/accounts/{a_id}/credits",
                OPS_TOKEN,
                b'{"credit_id": "hx14", "amount_micros": true, "reason": "x"}',
                {},
                {422},
            ),
        ]
        for name, method, path, token, raw, headers, expect in cases:
            h = {"Content-Type": "application/json", **headers}
            if h["Content-Type"] == "":
                del h["Content-Type"]
            body = _loads(raw)
            watched = self._watched_keys(body if isinstance(body, dict) else None, [acct, other])
            watched += self._watched_keys({"message_id": "hx2"}, [acct, other])
            before = await self._snapshot(watched)
            a = await d.http(method, path, token, raw=raw, headers=h)
            d.stats.hostile_cases += 1
            d.stats.steps += 1
            await self._judge(f"hostile case '{name}'", None, a, before, watched, expect)
        await self._slow_body(acct)

    async def _slow_body(self, acct: FuzzAccount) -> None:
        """A body that never finishes: the connection is answered 408 or closed within
        the configured body timeout, and nothing is charged."""
        d = self.d
        settings = d.world.settings
        port = d.world.gateway_ports[0]
        body = json.dumps(
            {"account_id": acct.account_id, "message_id": "hslow", "direction": "outbound"}
        ).encode()
        watched = self._watched_keys({"message_id": "hslow"}, [acct])
        before = await self._snapshot(watched)
        began = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {SWITCH_TOKEN}\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
            await writer.drain()
            limit = settings.http_body_read_timeout_s + 5.0
            try:
                head = await asyncio.wait_for(reader.read(200), timeout=limit)
            except TimeoutError:
                raise SimFailure(
                    "hostile", f"a half-sent body held its connection open past {limit:.0f}s"
                ) from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        d.stats.hostile_cases += 1
        if head and not head.startswith((b"HTTP/1.1 408", b"HTTP/1.1 400")):
            raise SimFailure("hostile", f"a half-sent body was answered {head[:40]!r}")
        if await self._snapshot(watched) != before:
            raise SimFailure("hostile", "a half-sent body changed the account")
        del began

    async def csv_check(self, lanes: list[Any]) -> None:
        """Ids and reasons the switch and ops chose (some start with '=', '+', '-',
        '@') reach the customer's CSV export; no text cell may start a formula."""
        import csv
        import io

        d = self.d
        for lane in lanes:
            if lane.token is None or not lane.model.one().exists:
                continue
            a = await d.http("GET", f"/v1/accounts/{lane.account_id}/activity.csv", lane.token)
            if a.status != 200:
                continue
            text = a.body.get("_raw", "") if isinstance(a.body, dict) else ""
            raw = await self._raw_get(f"/v1/accounts/{lane.account_id}/activity.csv", lane.token)
            rows = list(csv.reader(io.StringIO(raw or text)))
            header = rows[0] if rows else []
            text_cols = [
                i for i, name in enumerate(header) if name in ("request_id", "detail", "label")
            ]
            for row in rows[1:]:
                for i in text_cols:
                    if i < len(row) and row[i].startswith(FORMULA_STARTS):
                        finding = (
                            f"activity.csv of {lane.account_id}: cell {header[i]}={row[i]!r} "
                            "starts a spreadsheet formula"
                        )
                        if "csv_formulas" in KNOWN_OPEN:
                            d.stats.known_open.setdefault("csv_formulas", finding)
                            break
                        raise SimFailure("hostile", finding)
            d.stats.hostile_cases += 1

    async def _raw_get(self, path: str, token: str) -> str:
        d = self.d
        assert d.session is not None
        async with d.session.get(
            d.world.gateway_urls()[0] + path, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            return await r.text()


def _draw(strategy: Any, seed: int, count: int) -> list[Any]:
    """`count` examples of a strategy, the same ones for a seed (no shrinking, no
    example database: generation only)."""
    drawn: list[Any] = []

    @hypothesis.seed(seed)
    @hsettings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(case: Any) -> None:
        drawn.append(case)

    # An operation with nothing to make invalid (no body, no parameters) has no
    # negative examples: hypothesis says so, and it gets none.
    with contextlib.suppress(hypothesis.errors.Unsatisfiable, hypothesis.errors.FailedHealthCheck):
        draw()
    return drawn


def _is_json(body: Any) -> bool:
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        return False
    return True


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _short(value: Any) -> str:
    with contextlib.suppress(Exception):
        text = json.dumps(value, default=repr)
        return text if len(text) < 200 else text[:200] + "..."
    return repr(value)[:200]
