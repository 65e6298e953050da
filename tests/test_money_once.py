"""Money from cards moves once, forever, under odd settings and failed writes:
pay now, webhooks and automatic recharge after the idempotency window; the
recharge amount cap and threshold rule; one open recharge per account; card
and recharge settings that stay consistent when a commit fails or the gateway
dies in between; payment endpoints for the customer only.

The payments fixtures run with METERING_IDEMPOTENCY_WINDOW_S=1, so "after the
window" is a sleep of about a second."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from devkit.testing import RATE_CARD, StripeServer
from metering.payments.charges import PAY_NOW, Charge, record_succeeded
from metering.payments.recharge_worker import RechargeWorker
from metering.settings import Settings
from metering.store import Store
from tests.conftest import OPS, SWITCH
from tests.fixtures_payments import (
    STRIPE_KEY,
    WEBHOOK_ENDPOINT_IDS,
    Mailbox,
    PaymentsGateway,
    charges_of,
    customer_account,
    post_signed_event,
    put_recharge,
    wait_until,
)
from tests.test_payments import balance_of, put_card
from tests.test_recharge import _has_mail, attempts, run_until, send_messages, set_up_recharge

USD = 1_000_000
SMS_MICROS = RATE_CARD["sms_outbound_micros"]


async def funds_added(pay_db: Any, pay_store: Store, account_id: str) -> list[str]:
    """The account's credits, from the Redis stream and from Postgres (whichever
    holds each entry), by seq: the amounts as strings."""
    keys = pay_store.account_keys(account_id)
    by_seq = {
        int(f["seq"]): f["amount_micros"]
        for _id, f in await pay_store.redis.xrange(keys.shard.ledger)
        if f["account_id"] == account_id and f["item"] == "funds_added"
    }
    rows = await pay_db.fetch(
        "SELECT seq, amount_micros FROM ledger_entries "
        "WHERE account_id = $1 AND item = 'funds_added'",
        account_id,
    )
    by_seq.update({r["seq"]: str(r["amount_micros"]) for r in rows})
    return [by_seq[seq] for seq in sorted(by_seq)]


def window_passes(settings: Settings) -> float:
    return settings.idempotency_window_s + 0.3


def succeeded_event(intent: dict[str, Any]) -> dict[str, Any]:
    """A new payment_intent.succeeded event (its own id) about a real PaymentIntent,
    as Stripe sends when a delivery is resent or another endpoint is added."""
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": intent},
    }


async def intent_of(stripe_server: StripeServer, intent_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stripe_server.url) as client:
        r = await client.get(
            f"/v1/payment_intents/{intent_id}", headers={"Authorization": f"Bearer {STRIPE_KEY}"}
        )
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---- one credit per charge, after the window --------------------------------------


async def test_pay_now_repeated_after_the_idempotency_window_credits_nothing_more(
    pay_http: httpx.AsyncClient, pay_db: Any, pay_store: Store, pay_settings: Settings
) -> None:
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    url = f"/v1/accounts/{account_id}/payments"
    body = {"payment_id": "late-retry", "amount_micros": 20 * USD}
    first = await pay_http.post(url, headers=auth, json=body)
    assert first.status_code == 200, first.text
    await asyncio.sleep(window_passes(pay_settings))
    for _ in range(3):
        again = await pay_http.post(url, headers=auth, json=body)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert await balance_of(pay_http, account_id, auth) == 20 * USD
    assert await funds_added(pay_db, pay_store, account_id) == [str(20 * USD)]


async def test_succeeded_webhook_after_the_window_credits_nothing_more(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    stripe_server: StripeServer,
) -> None:
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    r = await pay_http.post(
        f"/v1/accounts/{account_id}/payments",
        headers=auth,
        json={"payment_id": "late-webhook", "amount_micros": 30 * USD},
    )
    assert r.status_code == 200, r.text
    intent = await intent_of(stripe_server, r.json()["payment_intent_id"])
    await asyncio.sleep(window_passes(pay_settings))
    answer = await post_signed_event(pay_http, succeeded_event(intent))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "already_credited", answer.text
    assert await balance_of(pay_http, account_id, auth) == 30 * USD
    assert await funds_added(pay_db, pay_store, account_id) == [str(30 * USD)]


async def test_recharge_webhook_after_the_window_credits_nothing_more(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    worker: RechargeWorker,
    stripe_server: StripeServer,
) -> None:
    account_id, auth = await set_up_recharge(
        pay_http, "pm_card_visa", 10 * USD + SMS_MICROS, "late@example.com"
    )
    await send_messages(pay_http, account_id, 2, "late")

    async def recharged() -> bool:
        return await balance_of(pay_http, account_id, auth) == 70 * USD - SMS_MICROS

    await run_until(worker, recharged)
    intent_id = await pay_db.fetchval(
        "SELECT payment_intent_id FROM payments WHERE account_id = $1", account_id
    )
    intent = await intent_of(stripe_server, intent_id)
    await asyncio.sleep(window_passes(pay_settings))
    answer = await post_signed_event(pay_http, succeeded_event(intent))
    assert answer.status_code == 200, answer.text
    for _ in range(3):
        await worker.step()
    assert await balance_of(pay_http, account_id, auth) == 70 * USD - SMS_MICROS
    credits = await funds_added(pay_db, pay_store, account_id)
    assert credits == [str(10 * USD + SMS_MICROS), str(60 * USD)]


# ---- who may pay --------------------------------------------------------------------


async def test_payment_endpoints_refuse_the_ops_and_switch_roles_and_change_nothing(
    pay_http: httpx.AsyncClient, pay_db: Any, stripe_server: StripeServer
) -> None:
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    base = f"/v1/accounts/{account_id}"
    calls = [
        ("POST", "/payments", {"payment_id": "by-ops", "amount_micros": 20 * USD}),
        ("PUT", "/card", {"payment_method_id": "pm_card_mastercard"}),
        ("DELETE", "/card", None),
        (
            "PUT",
            "/recharge",
            {
                "amount_micros": 60 * USD,
                "threshold_micros": 10 * USD,
                "failure_email": "ops@example.com",
                "enabled": True,
            },
        ),
    ]
    for role in (OPS, SWITCH):
        for method, path, body in calls:
            r = await pay_http.request(method, base + path, headers=role, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"] == "forbidden"
    assert charges_of(stripe_server, account_id) == 0
    assert await balance_of(pay_http, account_id, auth) == 0
    view = (await pay_http.get(base, headers=auth)).json()
    assert view["card"]["brand"] == "visa" and view["recharge"]["enabled"] is False
    assert not await pay_db.fetchval(
        "SELECT 1 FROM recharge_settings WHERE account_id = $1", account_id
    )


# ---- recharge settings that cannot drain a card ---------------------------------------


async def test_recharge_amount_above_the_cap_is_refused(
    pay_http: httpx.AsyncClient, pay_db: Any
) -> None:
    account_id, auth = await customer_account(pay_http)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    r = await put_recharge(pay_http, account_id, auth, 1_000_000 * USD, 10 * USD, "cap@example.com")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "amount_micros" and "at most" in r.json()["message"]
    assert not await pay_db.fetchval(
        "SELECT 1 FROM recharge_settings WHERE account_id = $1", account_id
    )


async def test_a_threshold_one_recharge_cannot_lift_above_never_makes_a_second_charge(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    worker: RechargeWorker,
    stripe_server: StripeServer,
) -> None:
    """The reported drain: amount $51 below a $1,000 threshold, six texts, six charges."""
    account_id, auth = await customer_account(pay_http, 100 * USD)
    await put_card(pay_http, account_id, auth, "pm_card_visa")
    r = await put_recharge(pay_http, account_id, auth, 51 * USD, 1_000 * USD, "drain@example.com")
    for i in range(6):
        await send_messages(pay_http, account_id, 1, f"drain-{i}")
        for _ in range(2):  # one to take the request, one to charge it
            await worker.step()
    charges = charges_of(stripe_server, account_id)
    assert charges == 0, f"{charges} charges of $51 for six texts"
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "threshold_micros" and "below" in r.json()["message"]


async def test_an_amount_above_a_lowered_cap_is_not_charged_and_recharge_turns_off(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    stripe_client: Any,
    mailbox: Mailbox,
    stripe_server: StripeServer,
) -> None:
    """Settings saved under an older, higher cap: the worker refuses to charge them,
    says why once, and turns automatic recharge off so no debit asks again."""
    email = "lowered@example.com"
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", 10 * USD + SMS_MICROS, email)
    lowered = pay_settings.replace(recharge_micros_max=50 * USD)
    w = RechargeWorker(pay_store, pay_db, stripe_client, lowered, consumer="tests-lowered")
    await w.ensure_groups()
    await send_messages(pay_http, account_id, 2, "lowered")

    async def refused() -> bool:
        rows = await attempts(pay_db, account_id)
        return bool(rows) and "Not charged" in rows[-1]["reason"]

    await run_until(w, refused)
    await send_messages(pay_http, account_id, 3, "after")
    for _ in range(5):
        await w.step()
    assert charges_of(stripe_server, account_id) == 0
    assert len(await attempts(pay_db, account_id)) == 1
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["recharge"]["enabled"] is False and view["recharge"]["pending"] is False
    assert "above the limit" in view["recharge"]["last_failure"]
    await wait_until(lambda: _has_mail(mailbox, email), timeout_s=5)
    assert len(mailbox.to(email)) == 1


async def test_an_account_never_has_two_recharges_in_flight(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    worker: RechargeWorker,
    stripe_server: StripeServer,
) -> None:
    """A second request for an account that has an open episode (a lost mark, a
    request replayed) opens nothing: one episode, one charge."""
    account_id, auth = await set_up_recharge(
        pay_http, "pm_card_visa", 10 * USD + SMS_MICROS, "twice@example.com"
    )
    await send_messages(pay_http, account_id, 2, "twice")
    keys = pay_store.account_keys(account_id)
    [(_, request)] = [
        (i, f)
        for i, f in await pay_store.redis.xrange(keys.shard.recharge)
        if f["account_id"] == account_id
    ]
    # The same account asks again under another mark, before the worker ran.
    await pay_store.redis.xadd(keys.shard.recharge, {**request, "at_us": int(request["at_us"]) + 1})
    for _ in range(2):
        await worker.read_requests()
    open_episodes = await pay_db.fetchval(
        "SELECT count(*) FROM recharge_episodes WHERE account_id = $1 AND status = 'open'",
        account_id,
    )
    assert open_episodes == 1

    async def recharged() -> bool:
        return await balance_of(pay_http, account_id, auth) == 70 * USD - SMS_MICROS

    await run_until(worker, recharged)
    for _ in range(5):
        await worker.step()
    assert charges_of(stripe_server, account_id) == 1
    assert await balance_of(pay_http, account_id, auth) == 70 * USD - SMS_MICROS


# ---- card and recharge settings: Postgres first, never a Redis write inside -----------


@pytest.fixture
async def failing_commit(pay_db: Any) -> AsyncIterator[Any]:
    """Make the commit of one account's card or recharge settings change fail, as a
    deferred constraint does: the statements run, COMMIT raises."""
    made: list[str] = []

    async def fail_commits_of(account_id: str) -> None:
        name = f"fail_commit_{uuid.uuid4().hex[:8]}"
        await pay_db.execute(
            f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF coalesce(NEW.account_id, OLD.account_id) = '{account_id}' THEN
                    RAISE EXCEPTION 'commit refused (test)';
                END IF;
                RETURN NULL;
            END $$"""
        )
        made.append(name)
        for table in ("cards_on_file", "recharge_settings"):
            await pay_db.execute(
                f"CREATE CONSTRAINT TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}()"
            )

    yield fail_commits_of
    for name in made:
        for table in ("cards_on_file", "recharge_settings"):
            await pay_db.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        await pay_db.execute(f"DROP FUNCTION IF EXISTS {name}()")


async def stores_agree(pay_db: Any, pay_store: Store, account_id: str) -> dict[str, Any]:
    """The card and the recharge switch in Postgres and in Redis: asserted equal."""
    row = await pay_db.fetchrow(
        "SELECT c.payment_method_id, r.enabled FROM (SELECT $1::text AS account_id) a "
        "LEFT JOIN cards_on_file c USING (account_id) "
        "LEFT JOIN recharge_settings r USING (account_id)",
        account_id,
    )
    pm, enabled = await pay_store.redis.hmget(
        pay_store.account_keys(account_id).account, "card_payment_method_id", "recharge_enabled"
    )
    postgres = {"card": row["payment_method_id"], "enabled": bool(row["enabled"])}
    redis = {"card": pm, "enabled": enabled == "1"}
    assert postgres == redis, f"Postgres {postgres} but Redis {redis}"
    return postgres


async def test_a_failed_commit_leaves_card_and_recharge_as_they_were_in_both_stores(
    pay_http: httpx.AsyncClient, pay_db: Any, pay_store: Store, failing_commit: Any
) -> None:
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", 0, "commit@example.com")
    before = await stores_agree(pay_db, pay_store, account_id)
    assert before["card"] and before["enabled"] is True
    await failing_commit(account_id)
    base = f"/v1/accounts/{account_id}"
    # A connection of its own per request: the server closes one after a 500, and a
    # keep-alive connection reused at that moment would fail before any answer.
    async with httpx.AsyncClient(base_url=pay_http.base_url, timeout=30) as http:
        r = await http.delete(base + "/card", headers=auth)
    assert r.status_code >= 500, r.text
    assert await stores_agree(pay_db, pay_store, account_id) == before
    async with httpx.AsyncClient(base_url=pay_http.base_url, timeout=30) as http:
        r = await put_recharge(
            http, account_id, auth, 70 * USD, 20 * USD, "commit@example.com", enabled=False
        )
    assert r.status_code >= 500, r.text
    assert await stores_agree(pay_db, pay_store, account_id) == before
    async with httpx.AsyncClient(base_url=pay_http.base_url, timeout=30) as http:
        r = await http.put(
            base + "/card", headers=auth, json={"payment_method_id": "pm_card_chargeCustomerFail"}
        )
    assert r.status_code >= 500, r.text
    assert await stores_agree(pay_db, pay_store, account_id) == before


async def test_a_change_committed_before_the_gateway_died_reaches_redis_by_the_repair(
    pay_settings: Settings,
    pay_db: Any,
    pay_store: Store,
    pay_http: httpx.AsyncClient,
    worker: RechargeWorker,
) -> None:
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", 0, "died@example.com")
    dying = PaymentsGateway(pay_settings.replace(crash_point="settings.committed"))
    try:
        async with httpx.AsyncClient(base_url=dying.url, timeout=10) as http:
            with pytest.raises(httpx.TransportError):
                await http.delete(f"/v1/accounts/{account_id}/card", headers=auth)
        dying.proc.wait(timeout=10)
        assert dying.proc.returncode == -9  # SIGKILL, right after the commit
    finally:
        dying.stop()
    # Postgres has the deletion, Redis does not yet: the repair copies it.
    assert (
        await pay_db.fetchval("SELECT 1 FROM cards_on_file WHERE account_id = $1", account_id)
        is None
    )
    keys = pay_store.account_keys(account_id)
    assert await pay_store.redis.hget(keys.account, "card_payment_method_id")

    async def copied() -> bool:
        await worker.step()
        return not await pay_store.redis.hget(keys.account, "card_payment_method_id")

    await wait_until(copied, timeout_s=5)
    assert await stores_agree(pay_db, pay_store, account_id) == {"card": None, "enabled": False}


# Every event goes to both endpoints of the payments gateway.
assert len(WEBHOOK_ENDPOINT_IDS) == 2


async def test_twins_recording_one_charge_at_once_all_find_it_recorded(
    pay_settings: Settings, pay_db: Any
) -> None:
    """Requests and webhooks recording the same charge at the same moment each
    write the same PaymentIntent into the same row. As one INSERT ... ON CONFLICT
    DO UPDATE, Postgres reported some of them as a unique violation on the
    PaymentIntent, or as a deadlock; none of them may take the charge for another
    payment's (found by the simulation: one of four identical pay-nows answered
    409 charge_mismatch while the others were credited)."""
    account_id = f"twins-{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(pay_settings.database_url, min_size=6, max_size=6)
    try:
        for n in range(3_000):
            charge = Charge(
                account_id, f"pay-{n}", PAY_NOW, 5_000_000, f"pi_twins_{account_id}_{n}"
            )
            if n % 2:  # pay now's pending row; a webhook or a recharge may come first
                await pool.execute(
                    "INSERT INTO payments (account_id, payment_id, kind, amount_micros, status) "
                    "VALUES ($1, $2, 'pay_now', $3, 'pending')",
                    account_id,
                    charge.payment_id,
                    charge.amount_micros,
                )
            answers = await asyncio.gather(*(record_succeeded(pool, charge) for _ in range(6)))
            assert answers == [False] * 6, (n, answers)
        # Another payment's PaymentIntent is still refused.
        other = Charge(account_id, "pay-0", PAY_NOW, 5_000_000, f"pi_twins_{account_id}_1")
        assert await record_succeeded(pool, other) is None
        await pool.execute(
            "INSERT INTO payments (account_id, payment_id, kind, amount_micros, status) "
            "VALUES ($1, 'stray', 'pay_now', 5000000, 'pending')",
            account_id,
        )
        stray = Charge(account_id, "stray", PAY_NOW, 5_000_000, f"pi_twins_{account_id}_2")
        assert await record_succeeded(pool, stray) is None
    finally:
        await pool.execute("DELETE FROM payments WHERE account_id = $1", account_id)
        await pool.close()
