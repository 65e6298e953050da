"""Every kind of Stripe-backed credit replayed after the idempotency window, after
a gateway restart and after `rebuild`, in every order, against the real local
Stripe: exactly one credit per charge, and the ledger and Postgres agree.

A world of its own: a private redis-server (flushed for the rebuild), a Postgres
schema, a local Stripe whose webhook deliveries the test sends itself (real
events, freshly signed, as Stripe's redelivery does; and the same event under a
new id), one gateway and real recharge worker processes. Each charge is first
credited by one path, and every path is replayed after each condition:

    A  pay now, the request credits first; the webhook comes later
    B  pay now, the webhook credits first (the request lost Stripe's answer)
    Ck automatic recharge, a worker credits first and dies (SIGKILL) before
       Postgres records it; the webhook and another worker come after condition k
    Dk automatic recharge, the webhook credits first while a worker waits for
       Stripe's answer across condition k; the worker then goes on to credit it

The conditions come one after the other (k = 1, 2, 3): the idempotency window
passes, the gateway restarts, Redis is lost and rebuilt from Postgres. A and B,
and every Ck and Dk made before, are replayed again after each.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devkit.testing import RATE_CARD, GatewayProcess, StripeServer
from metering import crash_points
from metering.settings import Settings
from tests.fixtures_ledger import LedgerWorld, ledger_world
from tests.fixtures_payments import (
    STRIPE_KEY,
    WEBHOOK_SECRET,
    customer_account,
    post_signed_event,
    wait_until,
)
from tests.test_payments import put_card
from tests.test_recharge import send_messages, set_up_recharge
from tests.test_recharge_faults import WorkerProcess

USD = 1_000_000
SMS_MICROS = RATE_CARD["sms_outbound_micros"]
START = 10 * USD + SMS_MICROS
RECHARGED = START - 2 * SMS_MICROS + 60 * USD
SUCCEEDED = "payment_intent.succeeded"
CONDITIONS = ("window", "gateway_restart", "rebuild")


class Replay:
    """The world, its Stripe, its gateway and what each charge is."""

    def __init__(self, world: LedgerWorld, stripe: StripeServer, settings: Settings) -> None:
        self.world = world
        self.stripe = stripe
        self.settings = settings
        self.gateway = GatewayProcess(settings)
        stripe.register_webhook("replay", self.gateway.url + "/v1/stripe/webhook", WEBHOOK_SECRET)
        self.http = httpx.AsyncClient(base_url=self.gateway.url, timeout=30)
        self.workers: list[WorkerProcess] = []
        # charge name -> (account, customer auth, expected balance)
        self.accounts: dict[str, tuple[str, dict[str, str], int]] = {}
        self.intents: dict[str, str] = {}

    def worker(self, consumer: str, **changes: Any) -> WorkerProcess:
        w = WorkerProcess(self.settings.replace(**changes), consumer)
        self.workers.append(w)
        return w

    async def close(self) -> None:
        await self.http.aclose()
        for w in self.workers:
            w.stop()
        self.gateway.stop()

    async def pay_now(self, name: str) -> httpx.Response:
        account_id, auth, _ = self.accounts[name]
        amount = {"A": 20 * USD, "B": 30 * USD}[name]
        return await self.http.post(
            f"/v1/accounts/{account_id}/payments",
            headers=auth,
            json={"payment_id": f"pay-{name}", "amount_micros": amount},
        )

    async def webhook(self, name: str) -> list[str]:
        """Stripe sends the charge's succeeded event again; the gateway's outcomes."""
        [event_id] = self.stripe.events_of(STRIPE_KEY, self.intents[name], SUCCEEDED)
        deliveries = await asyncio.to_thread(self.stripe.resend, event_id)
        assert [d["status"] for d in deliveries] == [200], deliveries
        return [d["body"] for d in deliveries]

    async def fresh_event(self, name: str) -> str:
        """The charge's succeeded event under a new event id, correctly signed: what
        a replay by anyone holding a signed event, or a second event about the same
        charge, looks like. The gateway's outcome."""
        [event_id] = self.stripe.events_of(STRIPE_KEY, self.intents[name], SUCCEEDED)
        async with httpx.AsyncClient(base_url=self.stripe.url) as client:
            r = await client.get(
                f"/v1/events/{event_id}", headers={"Authorization": f"Bearer {STRIPE_KEY}"}
            )
        event = {**r.json(), "id": f"evt_again_{uuid.uuid4().hex}"}
        answer = await post_signed_event(self.http, event)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["outcome"])

    def intent_at_stripe(self, name: str) -> str:
        """The one PaymentIntent Stripe holds for the charge's account."""
        account_id = self.accounts[name][0]
        [intent] = [
            i["id"]
            for i in self.stripe.payment_intents(STRIPE_KEY)
            if i["metadata"].get("account_id") == account_id
        ]
        return str(intent)


@pytest.fixture
async def replay() -> AsyncIterator[Replay]:
    async with ledger_world() as world:
        stripe = StripeServer()
        try:
            stripe.pause_deliveries()
            settings = world.settings.replace(
                stripe_api_base=stripe.url,
                stripe_api_key=STRIPE_KEY,
                stripe_webhook_secret=WEBHOOK_SECRET,
                stripe_max_network_retries=0,
                idempotency_window_s=1,
                call_late_commit_window_s=1,
                recharge_poll_interval_s=0.05,
                recharge_repair_interval_s=0.2,
                recharge_repair_grace_s=0.5,
                smtp_port=1,  # no email is expected; a failure to send is only logged
            )
            r = Replay(world, stripe, settings)
            try:
                yield r
            finally:
                await r.close()
        finally:
            stripe.stop()


async def pay_now_first_credits(r: Replay) -> None:
    """A by its request, B by its webhook."""
    for name in ("A", "B"):
        account_id, auth = await customer_account(r.http)
        await put_card(r.http, account_id, auth, "pm_card_visa")
        r.accounts[name] = (account_id, auth, {"A": 20, "B": 30}[name] * USD)
    answer = await r.pay_now("A")
    assert answer.status_code == 200, answer.text
    r.intents["A"] = answer.json()["payment_intent_id"]
    # Stripe charged B but its answer was lost: 503, the row stays pending.
    r.stripe.lose_responses(1)
    answer = await r.pay_now("B")
    assert answer.status_code == 503, answer.text
    r.intents["B"] = r.intent_at_stripe("B")
    [outcome] = await r.webhook("B")
    assert outcome.endswith('"credited"}'), outcome


async def recharge_first_credits(r: Replay, k: int) -> None:
    """Dk by its webhook while the main worker waits for Stripe's answer; Ck by a
    worker that dies right after crediting (its long lease leaves Ck to the main
    worker's repair)."""
    for name in (f"C{k}", f"D{k}"):
        account_id, auth = await set_up_recharge(r.http, "pm_card_visa", START, "r@x.example")
        r.accounts[name] = (account_id, auth, RECHARGED)
    r.stripe.hold_intents(1)
    await send_messages(r.http, r.accounts[f"D{k}"][0], 2, "d")

    async def held() -> bool:
        return r.stripe.held() == 1

    await wait_until(held, timeout_s=15)
    r.intents[f"D{k}"] = r.intent_at_stripe(f"D{k}")
    [outcome] = await r.webhook(f"D{k}")
    assert outcome.endswith('"credited"}'), outcome
    # The main worker is stuck on Dk: only the dying one takes Ck.
    dying = r.worker(f"replay-c{k}", crash_point=crash_points.CHARGE_CREDITED, recharge_lease_s=60)
    await send_messages(r.http, r.accounts[f"C{k}"][0], 2, "c")
    assert dying.died_by_sigkill(), dying.stop()
    r.intents[f"C{k}"] = r.intent_at_stripe(f"C{k}")


async def apply(r: Replay, condition: str) -> None:
    if condition == "window":
        await asyncio.sleep(r.settings.idempotency_window_s + 0.3)
    elif condition == "gateway_restart":
        r.gateway.stop()
        r.gateway.restart()
    else:  # Redis lost everything; rebuilt from Postgres once the writer drained
        drained = r.world.cli("ledger-writer", "--drain")
        assert drained.returncode == 0, drained.stderr
        await r.world.store.redis.flushall()
        rebuilt = r.world.cli("rebuild")
        assert rebuilt.returncode == 0, rebuilt.stderr
        restored = f"{len(r.intents)} charge credits restored"
        assert restored in rebuilt.stdout, rebuilt.stdout


async def replay_every_path(r: Replay, k: int) -> None:
    """Each path of each charge again, both orders of each pair. A webhook is the
    real event (a first delivery, or Stripe's redelivery of one already applied)
    and the same event under a new id."""
    for name in ("A", "B"):
        first = await r.pay_now(name)
        assert first.status_code == 200, first.text
        assert first.json()["payment_intent_id"] == r.intents[name]
        [outcome] = await r.webhook(name)
        # A's event reaches the gateway for the first time after the first condition.
        first_delivery = name == "A" and k == 1
        assert outcome.endswith('"already_credited"}' if first_delivery else '"duplicate"}')
        assert await r.fresh_event(name) == "already_credited"
        again = await r.pay_now(name)
        assert again.json() == first.json()
    # Ck: its webhook's first delivery, then the main worker finishes what the dead
    # one left, once Dk's answer lets it go on.
    [outcome] = await r.webhook(f"C{k}")
    assert outcome.endswith('"already_credited"}'), outcome
    r.stripe.release_intents()

    async def settled() -> bool:
        return not await r.world.conn.fetchval(
            "SELECT count(*) FROM payments WHERE NOT credited"
        ) and not await r.world.conn.fetchval(
            "SELECT count(*) FROM recharge_episodes WHERE status = 'open'"
        )

    await wait_until(settled, timeout_s=20)
    for j in range(1, k + 1):
        for name in (f"D{j}", f"C{j}"):
            [outcome] = await r.webhook(name)
            assert outcome.endswith('"duplicate"}'), outcome
            assert await r.fresh_event(name) == "already_credited"


async def assert_once_per_charge(r: Replay) -> None:
    drained = r.world.cli("ledger-writer", "--drain")
    assert drained.returncode == 0, drained.stderr
    conn = r.world.conn
    for name, (account_id, auth, balance_micros) in r.accounts.items():
        view = (await r.http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
        assert view["balance_micros"] == balance_micros, name
        credits = await conn.fetch(
            "SELECT request_id FROM ledger_entries WHERE account_id = $1 "
            "AND item = 'funds_added' AND detail NOT LIKE 'ops_credit%'",
            account_id,
        )
        assert [c["request_id"] for c in credits] == [r.intents[name]], name
        row = await conn.fetchrow(
            "SELECT payment_intent_id, status, credited FROM payments WHERE account_id = $1",
            account_id,
        )
        assert tuple(row) == (r.intents[name], "succeeded", True), name
    assert r.stripe.intents_created() == len(r.intents) == 2 + 2 * len(CONDITIONS)
    check = r.world.cli("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr


async def test_every_stripe_credit_replayed_in_every_order_is_credited_once(
    replay: Replay,
) -> None:
    await pay_now_first_credits(replay)
    replay.worker("replay")  # the main worker, alive throughout
    for k, condition in enumerate(CONDITIONS, start=1):
        await recharge_first_credits(replay, k)
        await apply(replay, condition)
        await replay_every_path(replay, k)
    await asyncio.sleep(0.5)  # more worker rounds and repairs: nothing more
    await assert_once_per_charge(replay)
