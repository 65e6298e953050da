"""The auditor: the README's invariants checked on the real system.

After every batch (cheap, one MULTI of the accounts the batch touched):
balance >= 0, reserved >= 0, balance >= reserved, reserved = the sum of the open
calls' holds, the open-call set = the calls open in Redis, and the state one of
the model's worlds predicts. After a driven sweep: no call past its validity is
still open. While the recharge worker is healthy: no recharge pending for long.

Deep (periodically and at the end): the ledger writer drains; every answered
charge is in Postgres exactly once at its seq; seqs gapless and balance_after a
running sum; Postgres equals Redis; no ledger conflicts; each Stripe charge
(localstripe's own record) credited once and every card credit backed by one;
at most one recharge episode open per account and one charge per episode;
settings and card on file the same in Postgres and Redis; `metering reconcile`
exits 0.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import subprocess
import sys
import time
from typing import Any

from devkit.testing import ROOT
from metering.keys import AccountKeys
from sim.driver import Driver, Lane, SimFailure, now_ms
from sim.model import SETTINGS_FIELDS, State

# A recharge pending this long while nothing stands in its way is stuck.
RECHARGE_STUCK_S = 8.0
# A call open this long past its validity after a sweep ran is a sweeper failure.
EXPIRY_LATE_MS = 1_500
DRAIN_TIMEOUT_S = 30.0
PAYMENT_IN_DETAIL = re.compile(r"\bpayment (\S+)")
QUIET_TIMEOUT_S = 30.0


class RedisUnreadable(Exception):
    """The snapshot could not read Redis (a Redis fault is in force)."""


class Auditor:
    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self.verified_seq: dict[str, int] = collections.defaultdict(int)
        self.last_sweep_ms = 0
        self.deep_count = 0

    @property
    def world(self) -> Any:
        return self.d.world

    # ---- after every batch ----

    async def snapshot(
        self, lanes: list[Lane], after_sweep_ms: int = 0, must: bool = False
    ) -> None:
        """Read the accounts atomically and check them; a read that fails while a
        Redis fault explains it is skipped, unless `must` (then retried)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            try:
                await self._snapshot(lanes, after_sweep_ms)
                return
            except RedisUnreadable:
                if not must or time.monotonic() > deadline:
                    if must:
                        raise SimFailure("audit", "Redis stayed unreadable for the audit") from None
                    return
                await asyncio.sleep(0.2)

    async def _snapshot(self, lanes: list[Lane], after_sweep_ms: int) -> None:
        if not lanes:
            return
        store = self.world.store
        shard_count = store.settings.shard_count
        plan: list[tuple[Lane, AccountKeys, list[str]]] = []
        for lane in lanes:
            keys = AccountKeys(lane.account_id, shard_count)
            cids = sorted(
                {
                    c.call_id
                    for w in lane.model.worlds
                    for c in w.calls.values()
                    if c.state == "open"
                }
            )
            plan.append((lane, keys, cids))
        try:
            async with store.redis.pipeline(transaction=True) as pipe:
                for _, keys, cids in plan:
                    pipe.hgetall(keys.account)
                    pipe.smembers(keys.calls)
                    for cid in cids:
                        pipe.hmget(keys.call(cid), "state", "held", "granted_s", "closed_us")
                answers = await pipe.execute()
        except Exception as exc:  # Redis down in a fault: nothing to read now
            if self.d.faults.recent("redis"):
                raise RedisUnreadable() from exc
            raise SimFailure("audit", f"the snapshot read failed: {exc!r}") from exc
        self.d.stats.snapshots += 1
        at = now_ms()
        pos = 0
        for lane, _keys, cids in plan:
            h, members = answers[pos], set(answers[pos + 1])
            calls = {cid: answers[pos + 2 + i] for i, cid in enumerate(cids)}
            pos += 2 + len(cids)
            self._check_account(lane, h, members, calls, at, after_sweep_ms)

    def _check_account(
        self,
        lane: Lane,
        h: dict[str, str],
        members: set[str],
        calls: dict[str, list[Any]],
        at: int,
        after_sweep_ms: int,
    ) -> None:
        d = self.d
        if h:
            balance, reserved, seq = int(h["balance"]), int(h["reserved"]), int(h["seq"])
            unknown = members - set(calls)
            if unknown:
                raise d.fail(
                    "invariant", lane, f"calls open in Redis the switch never reserved: {unknown}"
                )
            held = sum(int(calls[c][1] or 0) for c in members)
            for name, ok in (
                ("balance >= 0", balance >= 0),
                ("reserved >= 0", reserved >= 0),
                ("balance >= reserved (available >= 0)", balance >= reserved),
                (f"reserved = sum of open grants ({held})", reserved == held),
                ("every call in the open set is open", all(calls[c][0] == "open" for c in members)),
            ):
                if not ok:
                    raise d.fail(
                        "invariant", lane, f"{name} broken: balance={balance} reserved={reserved}"
                    )
        pending = bool(h.get("recharge_pending_since_us")) if h else False

        def fits(w: State) -> bool:
            if not h:
                return not w.exists
            if not w.exists or (w.balance, w.reserved, w.seq) != (balance, reserved, seq):
                return False
            if w.recharge_pending != pending:
                return False
            if w.recharge_enabled != (h.get("recharge_enabled") == "1"):
                return False
            if (w.card is not None) != bool(h.get("card_payment_method_id")):
                return False
            open_ids = {c.call_id for c in w.calls.values() if c.state == "open"}
            if open_ids != members:
                return False
            return all(
                str(w.calls[c].held) == calls[c][1] and str(w.calls[c].granted_s) == calls[c][2]
                for c in members
            )

        got = {
            k: h.get(k)
            for k in ("balance", "reserved", "seq", "recharge_pending_since_us", "recharge_enabled")
        }
        got["open_calls"] = sorted(members)
        got["card"] = bool(h.get("card_payment_method_id"))
        expired_at = {
            cid: int(v[3]) // 1000 for cid, v in calls.items() if v[0] == "expired" and v[3]
        }

        def learn(w: State) -> None:
            for cid, ms in expired_at.items():
                c = w.calls.get(cid)
                if c is not None and c.state in ("expired", "committed", "released"):
                    if c.expired_lo_ms or c.state == "expired":
                        c.expired_lo_ms = c.expired_hi_ms = ms
                    if c.state == "expired":
                        c.closed_lo_ms = c.closed_hi_ms = ms

        miss = lane.model.observe_state(fits, at, "state", got, learn if expired_at else None)
        if miss is not None:
            worlds = [_world_summary(w) for w in lane.model.worlds[:4]]
            raise d.fail(
                "state",
                lane,
                f"Redis holds {got}\n  no world of the model explains it; the worlds were:\n    "
                + "\n    ".join(worlds),
            )
        if after_sweep_ms and h and not d.faults.recent("redis", "writer"):
            for w in lane.model.worlds[:1]:
                for c in members:
                    call = w.calls.get(c)
                    if call is not None and call.expires_hi_ms + EXPIRY_LATE_MS < after_sweep_ms:
                        raise d.fail(
                            "expiry",
                            lane,
                            f"call {c} is still open {after_sweep_ms - call.expires_hi_ms} ms "
                            "past its validity after a sweep ran",
                        )
        if pending and h and not d.faults.recent("redis", "worker", "stripe", "worker_pg"):
            since_us = int(h["recharge_pending_since_us"])
            w = lane.model.one()
            stuck_s = time.time() - since_us / 1e6
            if (
                stuck_s > RECHARGE_STUCK_S
                and w.recharge_enabled
                and w.card is not None
                and not w.card_declines
            ):
                raise d.fail(
                    "recharge",
                    lane,
                    f"a recharge has been pending for {stuck_s:.1f} s with a working card, "
                    "recharge on and the worker healthy",
                )

    # ---- deep ----

    async def deep(self, final: bool = False) -> None:
        d = self.d
        self.deep_count += 1
        d.stats.deep_audits += 1
        lanes = [lane for lane in d.lanes if lane.model.one().exists or lane.touched]
        if final:
            await self._quiesce(lanes)
        await self.snapshot(lanes, must=True)
        seqs = {lane.account_id: lane.model.one().seq for lane in lanes}
        await self._drain(seqs)
        await self._check_ledger(lanes, seqs)
        await self._check_conflicts()
        await self._check_stripe(lanes, final)
        await self._check_episodes(lanes)
        await self._check_settings(lanes, final)
        if final:
            await self._check_postgres_equals_redis(lanes)
        if final or self.deep_count % 3 == 0:
            await self._reconcile()

    async def deep_lanes(self, lanes: list[Lane]) -> None:
        """The ledger part of the deep audit, for some accounts only (shrink trials)."""
        await self.snapshot(lanes, must=True)
        seqs = {lane.account_id: lane.model.one().seq for lane in lanes}
        await self._drain(seqs)
        await self._check_ledger(lanes, seqs)

    async def _quiesce(self, lanes: list[Lane]) -> None:
        """Let the workers finish: no recharge episode open, no recharge pending."""
        db = self.world.db
        ids = [lane.account_id for lane in lanes]
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        while time.monotonic() < deadline:
            open_eps = await db.fetchval(
                "SELECT count(*) FROM recharge_episodes WHERE status = 'open' "
                "AND account_id = ANY($1)",
                ids,
            )
            pending = 0
            async with self.world.store.redis.pipeline(transaction=False) as pipe:
                for lane in lanes:
                    pipe.hget(
                        AccountKeys(lane.account_id, self.world.store.settings.shard_count).account,
                        "recharge_pending_since_us",
                    )
                pending = sum(1 for v in await pipe.execute() if v)
            if not open_eps and not pending:
                return
            await asyncio.sleep(0.2)

    async def _drain(self, seqs: dict[str, int]) -> None:
        """Wait until Postgres holds every account's entries up to the snapshot's seq."""
        db = self.world.db
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        behind: dict[str, tuple[int, int]] = {}
        while time.monotonic() < deadline:
            rows = await db.fetch(
                "SELECT account_id, max(seq) AS s FROM ledger_entries "
                "WHERE account_id = ANY($1) GROUP BY account_id",
                list(seqs),
            )
            have = {r["account_id"]: r["s"] for r in rows}
            behind = {a: (s, have.get(a, 0)) for a, s in seqs.items() if have.get(a, 0) < s}
            if not behind:
                return
            self.world.check_workers()
            await asyncio.sleep(0.1)
        sample = dict(list(behind.items())[:5])
        raise SimFailure(
            "drain",
            f"the ledger writer did not bring Postgres up to Redis within {DRAIN_TIMEOUT_S}s: "
            f"{len(behind)} accounts behind, e.g. (redis seq, postgres seq) {sample}",
        )

    async def _check_ledger(self, lanes: list[Lane], seqs: dict[str, int]) -> None:
        db = self.world.db
        rows = await db.fetch(
            "SELECT account_id, seq, item, amount_micros, balance_after_micros, request_id, detail "
            "FROM ledger_entries WHERE account_id = ANY($1) ORDER BY account_id, seq",
            list(seqs),
        )
        by_account: dict[str, list[Any]] = collections.defaultdict(list)
        for r in rows:
            by_account[r["account_id"]].append(r)
        for lane in lanes:
            got = by_account.get(lane.account_id, [])
            limit = seqs[lane.account_id]
            got = [r for r in got if r["seq"] <= limit]
            # Gapless from 1, balance_after a running sum from zero.
            balance = 0
            for i, r in enumerate(got):
                if r["seq"] != i + 1:
                    raise self.d.fail(
                        "ledger", lane, f"seq gap: expected {i + 1}, Postgres has {r['seq']}"
                    )
                balance += r["amount_micros"]
                if r["balance_after_micros"] != balance:
                    raise self.d.fail(
                        "ledger",
                        lane,
                        f"seq {r['seq']}: balance_after {r['balance_after_micros']} but the "
                        f"running sum of amounts is {balance}",
                    )
            if len(got) != limit:
                raise self.d.fail(
                    "ledger", lane, f"Postgres holds {len(got)} entries, Redis seq is {limit}"
                )
            errors = []
            for w in lane.model.worlds:
                problem = _entries_problem(w, got, self.verified_seq[lane.account_id])
                if problem is None:
                    break
                errors.append(problem)
            else:
                raise self.d.fail(
                    "ledger",
                    lane,
                    "the Postgres ledger does not hold what was answered:\n    "
                    + "\n    ".join(errors[:3]),
                )
            self.verified_seq[lane.account_id] = limit

    async def _check_conflicts(self) -> None:
        rows = await self.world.db.fetch(
            "SELECT account_id, seq, item, amount_micros, request_id FROM ledger_conflicts LIMIT 5"
        )
        if rows:
            raise SimFailure(
                "ledger",
                "ledger_conflicts holds entries that reused a seq Postgres already had: "
                + "; ".join(str(dict(r)) for r in rows),
            )

    async def _check_stripe(self, lanes: list[Lane], final: bool) -> None:
        """Each charge Stripe made (its own record) is credited once; each card credit
        in the ledger is backed by one succeeded charge of the same amount."""
        stripe = self.world.stripe
        ours = {lane.account_id: lane for lane in lanes}
        intents = await asyncio.to_thread(
            stripe.payment_intents, self.world.settings.stripe_api_key
        )
        succeeded = {
            pi["id"]: pi
            for pi in intents
            if pi.get("status") == "succeeded"
            and (pi.get("metadata") or {}).get("account_id") in ours
        }
        # A card credit's ledger entry carries the PaymentIntent as its request id.
        rows = await self.world.db.fetch(
            "SELECT account_id, seq, amount_micros, request_id, detail FROM ledger_entries "
            "WHERE item = 'funds_added' AND account_id = ANY($1) AND request_id LIKE 'pi\\_%'",
            list(ours),
        )
        credits: dict[str, list[Any]] = collections.defaultdict(list)
        for r in rows:
            credits[r["request_id"]].append(r)
        for pi_id, found in credits.items():
            lane = ours.get(found[0]["account_id"])
            if len(found) > 1:
                raise self.d.fail(
                    "stripe",
                    lane,
                    f"Stripe charge {pi_id} credited {len(found)} times: "
                    + ", ".join(f"seq {r['seq']} {r['amount_micros']}" for r in found),
                )
            pi = succeeded.get(pi_id)
            if pi is None:
                raise self.d.fail(
                    "stripe", lane, f"a credit names {pi_id}, which Stripe never charged"
                )
            if pi["amount"] * 10_000 != found[0]["amount_micros"]:
                raise self.d.fail(
                    "stripe",
                    lane,
                    f"{pi_id} charged {pi['amount']} cents, "
                    f"credited {found[0]['amount_micros']} micros",
                )
            if pi["metadata"].get("account_id") != found[0]["account_id"]:
                raise self.d.fail("stripe", lane, f"{pi_id} credited to another account")
        per_episode: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for pi in succeeded.values():
            meta = pi.get("metadata") or {}
            if meta.get("kind") == "automatic_recharge":
                per_episode[(meta["account_id"], meta.get("episode_us", ""))].append(pi["id"])
        for (account_id, episode), pis in per_episode.items():
            if len(pis) > 1:
                raise self.d.fail(
                    "stripe",
                    ours.get(account_id),
                    f"recharge episode {episode} charged {len(pis)} times: {pis}",
                )
        if final:
            missing = [pi for pi in succeeded if pi not in credits]
            if missing:
                pi = succeeded[missing[0]]
                lane = ours.get(pi["metadata"]["account_id"])
                raise self.d.fail(
                    "stripe",
                    lane,
                    f"{len(missing)} Stripe charges never credited, e.g. {missing[0]} "
                    f"({pi['amount']} cents, {pi['metadata']})",
                )

    async def _check_episodes(self, lanes: list[Lane]) -> None:
        rows = await self.world.db.fetch(
            "SELECT account_id, count(*) AS n FROM recharge_episodes WHERE status = 'open' "
            "AND account_id = ANY($1) GROUP BY account_id HAVING count(*) > 1",
            [lane.account_id for lane in lanes],
        )
        if rows:
            lane = next(x for x in lanes if x.account_id == rows[0]["account_id"])
            raise self.d.fail(
                "recharge", lane, f"{rows[0]['n']} recharge episodes open at once for one account"
            )

    async def _check_settings(self, lanes: list[Lane], final: bool = False) -> None:
        """Recharge settings and the card on file agree between Postgres and Redis.
        Where the model allows Redis to lag (a copy lost with Redis's last second,
        which the repair makes again within its grace), a difference waits for the
        repair: skipped in a periodic audit, waited for in the final one."""
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        while True:
            differences = await self._settings_differences(lanes)
            lagging = [
                (lane, what)
                for lane, what in differences
                if not any(w.pg_pending for w in lane.model.worlds)
            ]
            if lagging:
                raise self.d.fail("consistency", *lagging[0])
            if not differences or not final:
                return
            if time.monotonic() > deadline:
                raise self.d.fail(
                    "consistency",
                    differences[0][0],
                    f"{differences[0][1]}, still {QUIET_TIMEOUT_S:.0f} s after the run "
                    "(the repair never copied it)",
                )
            await asyncio.sleep(0.2)

    async def _settings_differences(self, lanes: list[Lane]) -> list[tuple[Lane, str]]:
        db = self.world.db
        ids = [lane.account_id for lane in lanes]
        settings = {
            r["account_id"]: r
            for r in await db.fetch(
                "SELECT account_id, enabled, amount_micros, threshold_micros, failure_email "
                "FROM recharge_settings WHERE account_id = ANY($1)",
                ids,
            )
        }
        cards = {
            r["account_id"]
            for r in await db.fetch(
                "SELECT account_id FROM cards_on_file WHERE account_id = ANY($1)", ids
            )
        }
        shard_count = self.world.store.settings.shard_count
        async with self.world.store.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.hmget(
                    AccountKeys(lane.account_id, shard_count).account,
                    "recharge_enabled",
                    "recharge_amount_micros",
                    "recharge_threshold_micros",
                    "card_payment_method_id",
                )
            answers = await pipe.execute()
        differences = []
        for lane, (enabled, amount, threshold, card) in zip(lanes, answers, strict=True):
            s = settings.get(lane.account_id)
            pg = (
                (bool(s["enabled"]), s["amount_micros"], s["threshold_micros"])
                if s
                else (False, None, None)
            )
            redis = (
                enabled == "1",
                int(amount) if amount else None,
                int(threshold) if threshold else None,
            )
            if pg != redis:
                differences.append((lane, f"recharge settings: Postgres {pg}, Redis {redis}"))
            elif (lane.account_id in cards) != bool(card):
                differences.append(
                    (
                        lane,
                        f"card on file: Postgres "
                        f"{'has' if lane.account_id in cards else 'has none'}, "
                        f"Redis {'has' if card else 'has none'}",
                    )
                )
        return differences

    async def _check_postgres_equals_redis(self, lanes: list[Lane]) -> None:
        """Each account's (seq, balance) in Redis is the entry Postgres holds at that
        seq, once the writer has it. Redis is read first: a call the sweeper expires
        meanwhile moves Redis on, never back."""
        db = self.world.db
        ids = [lane.account_id for lane in lanes]
        shard_count = self.world.store.settings.shard_count
        async with self.world.store.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.hmget(AccountKeys(lane.account_id, shard_count).account, "seq", "balance")
            answers = await pipe.execute()
        accounts = {
            r["id"] for r in await db.fetch("SELECT id FROM accounts WHERE id = ANY($1)", ids)
        }
        wanted = {
            lane.account_id: (int(seq), int(balance))
            for lane, (seq, balance) in zip(lanes, answers, strict=True)
            if seq is not None
        }
        for lane, (seq, _) in zip(lanes, answers, strict=True):
            if (seq is None) != (lane.account_id not in accounts):
                raise self.d.fail(
                    "consistency", lane, "the account is in only one of Redis and Postgres"
                )
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            rows = await db.fetch(
                "SELECT account_id, seq, balance_after_micros FROM ledger_entries "
                "WHERE (account_id, seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))",
                list(wanted),
                [seq for seq, _ in wanted.values()],
            )
            at_seq = {r["account_id"]: r["balance_after_micros"] for r in rows}
            missing = [a for a, (seq, _) in wanted.items() if seq and a not in at_seq]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for lane in lanes:
            if lane.account_id not in wanted:
                continue
            seq, balance = wanted[lane.account_id]
            pg = at_seq.get(lane.account_id, 0 if seq == 0 else None)
            if pg != balance:
                raise self.d.fail(
                    "consistency",
                    lane,
                    f"after the writer drained: Redis (seq, balance) = ({seq}, {balance}), "
                    f"Postgres's balance_after at that seq = {pg}",
                )
        # And never behind: Postgres's last seq, then Redis again.
        rows = await db.fetch(
            "SELECT account_id, max(seq) AS seq FROM ledger_entries "
            "WHERE account_id = ANY($1) GROUP BY account_id",
            list(wanted),
        )
        async with self.world.store.redis.pipeline(transaction=False) as pipe:
            for account_id in wanted:
                pipe.hget(AccountKeys(account_id, shard_count).account, "seq")
            now = dict(zip(wanted, await pipe.execute(), strict=True))
        for r in rows:
            if r["seq"] > int(now[r["account_id"]] or 0):
                lane = next(x for x in lanes if x.account_id == r["account_id"])
                raise self.d.fail(
                    "consistency",
                    lane,
                    f"Redis is behind Postgres: seq {now[r['account_id']]} in Redis, "
                    f"{r['seq']} in Postgres",
                )

    async def _reconcile(self) -> None:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "metering", "--log-level", "warning", "reconcile"],
            cwd=ROOT,
            env=self.world.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stdout.splitlines() if "DIFFERENCE" in ln][:5]
            raise SimFailure(
                "reconcile",
                f"`metering reconcile` exited {proc.returncode}: "
                + ("; ".join(lines) or proc.stderr[-500:]),
            )


def _entries_problem(w: State, rows: list[Any], verified: int) -> str | None:
    """Why this world's entries do not match the Postgres rows (None if they do).
    An answered entry is pinned at the seq its answer gave; the entries of
    background events (expiries, recharge and webhook credits, late corrections)
    fill the seqs left, in whatever order they really happened."""
    entries = w.entries
    if len(entries) < len(rows):
        return f"Postgres has {len(rows)} entries, this world {len(entries)}"
    # A pay-now answer carries no seq: its credit is matched like an event's.
    pinned_sources = ("answer", "recovered")
    free_rows = []
    for r in rows[verified:]:
        e = entries[r["seq"] - 1]
        if e.source not in pinned_sources:
            free_rows.append(r)
            continue
        row = (r["item"], r["amount_micros"], r["balance_after_micros"])
        want = (e.item, e.amount, e.balance_after)
        if row != want or (e.source == "answer" and r["request_id"] != e.request_id):
            return (
                f"seq {r['seq']}: Postgres {row} {r['request_id']!r}, "
                f"expected {want} ({e.source} {e.request_id!r})"
            )
    for e in entries[verified : len(rows)]:
        if e.source in pinned_sources:
            continue
        found = next((r for r in free_rows if _is_event_row(e, r)), None)
        if found is None:
            return (
                f"no ledger entry for {e.source} {e.request_id!r} of {e.amount} "
                f"(item {e.item}); unexplained: "
                + ", ".join(
                    f"seq {r['seq']} {r['item']} {r['amount_micros']} {r['request_id']!r}"
                    for r in free_rows[:4]
                )
            )
        free_rows.remove(found)
    return None


def _is_event_row(e: Any, r: Any) -> bool:
    if (r["item"], r["amount_micros"]) != (e.item, e.amount):
        return False
    rid, detail = r["request_id"], r["detail"] or ""
    if e.source == "expiry":
        return bool(rid == e.request_id and detail.startswith("expired"))
    if e.source in ("late_commit", "late_release"):
        return bool(rid == e.request_id and detail.startswith(e.source))
    if e.source == "recharge":
        return "automatic_recharge" in detail
    if e.source in ("payment", "payment_answer"):
        return "pay_now" in detail or str(rid).startswith("pi_")
    return True


def _world_summary(w: State) -> str:
    open_calls = sorted(c.call_id for c in w.calls.values() if c.state == "open")
    return (
        f"balance={w.balance} reserved={w.reserved} seq={w.seq} pending={w.recharge_pending} "
        f"enabled={w.recharge_enabled} card={w.card is not None} open={open_calls} "
        f"fired={list(w.fired)[-4:]}"
    )


# ---- after a Redis crash that lost its last writes ----


async def after_redis_loss(auditor: Auditor, cut_ms: int, saved: dict[str, int]) -> int:
    """The documented recovery after Redis lost the writes after `cut_ms`: once the
    writer has drained, every account's Redis (seq, balance) equals Postgres's
    last entry (fast-forwarded, no seq ever reused), and nothing answered before
    the cut is gone. Then each account's model is re-based on what survived.
    `saved` is each account's seq at the cut. Returns the entries lost."""
    d = auditor.d
    world = auditor.world
    lanes = [lane for lane in d.lanes if lane.model.one().exists]
    lost = 0
    for lane in lanes:
        # The sweeper and the workers go on meanwhile: Redis may be a few entries
        # ahead of a drain; never behind it.
        for _ in range(50):
            await drain_stream(world)
            done = await _recovered(auditor, lane, cut_ms, saved)
            if done is not None:
                lost += done
                break
            await asyncio.sleep(0.2)
        else:
            raise d.fail("recovery", lane, "Redis stayed ahead of the drained ledger")
    return lost


async def _recovered(
    auditor: Auditor, lane: Lane, cut_ms: int, saved: dict[str, int]
) -> int | None:
    """Check and re-base one account after a Redis loss; None: Redis is ahead of
    Postgres still (look again after a drain). Returns the entries the loss took."""
    d = auditor.d
    world = auditor.world
    shard_count = world.store.settings.shard_count
    pg = await world.db.fetch(
        "SELECT account_id, seq, item, amount_micros, balance_after_micros, request_id, "
        "detail FROM ledger_entries WHERE account_id = $1 ORDER BY seq",
        lane.account_id,
    )
    durable = await world.db.fetchrow(
        "SELECT r.enabled, r.amount_micros, r.threshold_micros, "
        "c.account_id IS NOT NULL AS has_card, "
        "(SELECT max(amount_micros) FROM recharge_episodes e "
        "WHERE e.account_id = a.account_id AND e.status = 'open') AS open_episode_micros "
        "FROM (SELECT $1::text AS account_id) a "
        "LEFT JOIN recharge_settings r USING (account_id) "
        "LEFT JOIN cards_on_file c USING (account_id)",
        lane.account_id,
    )
    # The pay-now payments Postgres holds a row of (written before Stripe is called).
    paid_rows = {
        r["payment_id"]: r
        for r in await world.db.fetch(
            "SELECT payment_id, amount_micros, status FROM payments "
            "WHERE account_id = $1 AND kind = 'pay_now'",
            lane.account_id,
        )
    }
    keys = AccountKeys(lane.account_id, shard_count)
    cids = sorted({c for w in lane.model.worlds for c in w.calls})
    async with world.store.redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.account)
        pipe.smembers(keys.calls)
        for cid in cids:
            pipe.hgetall(keys.call(cid))
        answers = await pipe.execute()
    h, members = answers[0], set(answers[1])
    calls = dict(zip(cids, answers[2:], strict=True))
    pg_seq = pg[-1]["seq"] if pg else 0
    pg_balance = pg[-1]["balance_after_micros"] if pg else 0
    if not h:
        raise d.fail("recovery", lane, "the account is gone from Redis after recovery")
    seq, balance = int(h["seq"]), int(h["balance"])
    if seq > pg_seq:
        return None
    if (seq, balance) != (pg_seq, pg_balance):
        raise d.fail(
            "recovery",
            lane,
            f"after a Redis crash, recovery and the writer's drain: Redis (seq, balance) = "
            f"({seq}, {balance}) but Postgres's last entry is ({pg_seq}, {pg_balance}); "
            "the next change would reuse a seq Postgres holds"
            if seq < pg_seq
            else f"Redis ({seq}, {balance}) and Postgres ({pg_seq}, {pg_balance}) disagree",
        )
    if seq < saved.get(lane.account_id, 0):
        raise d.fail(
            "recovery",
            lane,
            f"Redis lost writes from before the crash window: seq {seq}, "
            f"{saved[lane.account_id]} answered before the cut",
        )
    lost = max(0, lane.model.one().seq - seq)
    lane.model.worlds = [
        _rebased(lane.model.worlds, h, members, calls, pg, cut_ms, durable, paid_rows)
    ]
    auditor.verified_seq[lane.account_id] = seq
    return lost


async def drain_stream(world: Any) -> None:
    """Wait (bounded) until the writer has committed every entry the streams hold;
    a writer that does not is a failure, not a wait without end."""
    from metering.ledger.lag import ledger_lag

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    behind: Any = "Redis unreadable"
    while time.monotonic() < deadline:
        try:
            lag = await ledger_lag(world.store)
            if not lag.entries_behind:
                return
            behind = lag.as_dict()
        except Exception:  # Redis still loading after its restart
            pass
        world.check_workers()
        await asyncio.sleep(0.1)
    raise SimFailure("ledger", f"the writer did not drain in {DRAIN_TIMEOUT_S:.0f} s: {behind}")


def _rebased(
    worlds: list[State],
    h: dict[str, str],
    members: set[str],
    calls: dict[str, list[Any]],
    pg: list[Any],
    cut_ms: int,
    durable_row: Any = None,
    paid_rows: dict[str, Any] | None = None,
) -> State:
    """The model's account after a loss: what Redis and Postgres hold now, with what
    was answered in the lost window marked uncertain."""
    from sim.model import Entry, Payment

    # The world whose history Redis now shows: the same seq if one has it (a
    # request whose answer a fault hid applied there, and its record with it).
    seq_now = int(h["seq"])

    def settings_as_postgres(x: State) -> bool:
        """This world's Postgres card and recharge settings are Postgres's own (a
        change whose answer a fault hid committed there, or did not)."""
        if durable_row is None:
            return True
        enabled = bool(durable_row["enabled"])
        return (
            (x.pg("card") is not None) == bool(durable_row["has_card"])
            and bool(x.pg("recharge_enabled")) == enabled
            and (not enabled or x.pg("recharge_threshold") == durable_row["threshold_micros"])
            and (not enabled or x.pg("recharge_amount") == durable_row["amount_micros"])
        )

    w = max(
        worlds,
        key=lambda x: (x.seq == seq_now, settings_as_postgres(x), x.seq <= seq_now, x.seq),
    )
    new = w.clone()
    # A payment another world knew (a pay now whose answer a fault hid, so the card
    # may have been charged or declined) stays known: the ledger below says
    # whether it was credited, else the webhook, the repair or the retry may still
    # credit it. Postgres's row (written before Stripe is called) says whether it
    # exists at all and whether it failed; without a row, a pay now that failed
    # before writing it left nothing.
    for x in worlds:
        for pid, p in x.payments.items():
            if pid not in new.payments and p.status in ("pending", "failed"):
                new.payments[pid] = dataclasses.replace(p)
    if paid_rows is not None:
        for pid in [pid for pid, p in new.payments.items() if p.status != "succeeded"]:
            if pid not in paid_rows:
                del new.payments[pid]
        for pid, row in paid_rows.items():
            p = new.payments.get(pid)
            if p is None:
                p = new.payments[pid] = Payment(row["amount_micros"], "pending")
            if row["status"] == "failed":
                p.status, p.credited = "failed", False
            elif p.status == "failed":
                p.status = "pending"  # the decline was never recorded: a retry asks Stripe
    # A call some other world knew (a reserve whose answer a fault hid) that Redis
    # holds: take it from that world.
    for cid, ch in calls.items():
        if ch and cid not in new.calls:
            source = next(x.calls[cid] for x in worlds if cid in x.calls)
            new.calls[cid] = dataclasses.replace(source, extend_bodies=dict(source.extend_bodies))
    new.balance, new.reserved, new.seq = int(h["balance"]), int(h["reserved"]), int(h["seq"])
    # The card and recharge settings: Postgres holds what was answered; Redis may
    # show an older copy, which the repair replaces (an event of the model).
    durable = {n: w.pg(n) for n in SETTINGS_FIELDS}
    new.pg_pending = None
    new.card = (
        {
            "brand": h.get("card_brand", ""),
            "last4": h.get("card_last4", ""),
            "exp_month": int(h.get("card_exp_month") or 0),
            "exp_year": int(h.get("card_exp_year") or 0),
        }
        if h.get("card_payment_method_id")
        else None
    )
    new.recharge_enabled = h.get("recharge_enabled") == "1"
    new.recharge_amount = (
        int(h["recharge_amount_micros"]) if h.get("recharge_amount_micros") else None
    )
    new.recharge_threshold = (
        int(h["recharge_threshold_micros"]) if h.get("recharge_threshold_micros") else None
    )
    new.recharge_email = h.get("recharge_failure_email") or None
    new.card_declines = durable["card_declines"]
    lagging = {n: v for n, v in durable.items() if getattr(new, n) != v}
    new.pg_pending = lagging or None
    pending = bool(h.get("recharge_pending_since_us"))
    if pending and not new.recharge_pending:
        new.recharge_pending_amount = int(h.get("recharge_amount_micros") or 0)
        new.recharge_pending_since_ms = int(h["recharge_pending_since_us"]) // 1000
    new.recharge_pending = pending
    new.recharge_end_allowed = True
    # An episode still open in Postgres whose pending mark Redis lost: the worker
    # carries it on (a charge and a credit) or ends it.
    open_episode = durable_row["open_episode_micros"] if durable_row is not None else None
    new.recharge_orphan_amount = int(open_episode) if open_episode and not pending else 0
    for cid, ch in calls.items():
        if not ch:
            # Redis holds no hash for it: a reserve lost with the last second (or
            # one no world knew, whose answer a fault hid) is gone.
            new.calls.pop(cid, None)
            continue
        c = new.calls[cid]
        # What the call hash holds now: an extend, a close or an expiry in the lost
        # second is gone with it.
        c.state, c.held, c.granted_s = ch["state"], int(ch["held"]), int(ch["granted_s"])
        c.extends = int(ch.get("extends") or 0)
        if ch.get("expires_ms"):
            c.expires_lo_ms = c.expires_hi_ms = int(ch["expires_ms"])
        c.extend_bodies = {
            eid: body for eid, body in c.extend_bodies.items() if f"extend:{eid}" in ch
        }
        if c.state == "open":
            c.commit_body = c.release_body = None
        else:
            closed_ms = int(ch["closed_us"]) // 1000 if ch.get("closed_us") else cut_ms
            if c.state == "expired":
                c.expired_charge = int(ch.get("expired_charge") or 0)
                c.expired_lo_ms = c.expired_hi_ms = closed_ms
            # The hash is kept one window from its last EXPIRE: its closing, or the
            # recovery that settled a closing Redis had lost (fast_forward.lua).
            kept_from = int(ch["recovered_us"]) // 1000 if ch.get("recovered_us") else closed_ms
            c.closed_lo_ms = c.closed_hi_ms = kept_from
    for key, rem in list(new.requests.items()):
        if rem.at_hi_ms >= cut_ms:
            new.requests[key] = dataclasses.replace(rem, uncertain=True)
    # The ledger names the payment each Stripe credit was for ("payment <id>").
    credited_ids = {
        m.group(1) for r in pg if (m := PAYMENT_IN_DETAIL.search(str(r["detail"] or "")))
    }
    for pid, p in new.payments.items():
        if pid in credited_ids:
            # Credited before the loss, also when its answer was lost (no body).
            p.status, p.credited = "succeeded", True
        elif p.status == "succeeded" and p.credited:
            # Stripe charged it; its credit was lost with Redis and is owed again.
            p.status, p.credited = "pending", False
    new.entries = [
        Entry(r["seq"], r["item"], r["amount_micros"], r["balance_after_micros"], "", "recovered")
        for r in pg
    ]
    new.fired = (*w.fired, "redis_loss")
    return new
