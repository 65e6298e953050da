"""Automatic recharge under faults made by real process actions: a recharge worker
that loses Postgres (a TCP proxy the test cuts) while it takes a request, a worker
SIGKILLed after reading a request and at each point between charging the card and
crediting it; and the bounded repair that lets no pending mark outlive its episode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ResponseError

from devkit.testing import RATE_CARD, ROOT, StripeServer, TcpProxy, settings_env
from metering import crash_points
from metering.payments.recharge_worker import RechargeWorker
from metering.settings import Settings
from metering.store import Store
from tests.conftest import OPS, url_port, url_with_port
from tests.fixtures_ledger import kill
from tests.fixtures_payments import (
    WEBHOOK_ENDPOINT_IDS,
    PaymentsGateway,
    charges_of,
    register_webhook,
    wait_until,
)
from tests.test_payments import balance_of
from tests.test_recharge import send_messages, set_up_recharge

USD = 1_000_000
SMS_MICROS = RATE_CARD["sms_outbound_micros"]
START = 10 * USD + SMS_MICROS  # the second text takes the balance below $10
RECHARGED = 70 * USD - SMS_MICROS  # after one $60 recharge


class WorkerProcess:
    """`python -m metering recharge-worker` as its own process, its log kept."""

    def __init__(self, settings: Settings, consumer: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="recharge-worker-", suffix=".log")[1])
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "metering",
                    "--log-level",
                    "info",
                    "recharge-worker",
                    "--consumer",
                    consumer,
                ],
                cwd=ROOT,
                env=settings_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def died_by_sigkill(self, timeout_s: float = 15) -> bool:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return self.proc.returncode == -9

    def stop(self) -> str:
        kill(self.proc)  # type: ignore[arg-type]
        text = self.log.read_text()
        self.log.unlink(missing_ok=True)
        return text


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; each is stopped (only those) at the end."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def worker_settings(pay_settings: Settings, **changes: Any) -> Settings:
    return pay_settings.replace(
        recharge_lease_s=1.0,
        outage_backoff_max_s=0.3,
        stream_claim_idle_ms=500,
        **changes,
    )


async def die_at(
    point: str,
    consumer: str,
    pay_http: httpx.AsyncClient,
    pay_settings: Settings,
    workers: list[WorkerProcess],
    account_id: str,
    tag: str,
) -> None:
    """A worker set to kill itself at `point`; two texts take the account below its
    threshold, and the worker dies there (SIGKILL)."""
    dying = WorkerProcess(worker_settings(pay_settings, crash_point=point), consumer)
    workers.append(dying)
    await asyncio.sleep(1.0)  # started, groups made
    await send_messages(pay_http, account_id, 2, tag)
    assert dying.died_by_sigkill(), dying.stop()


async def recharge_credits(pay_db: Any, pay_store: Store, account_id: str) -> list[str]:
    """The account's credits of automatic recharges (Redis stream or Postgres)."""
    keys = pay_store.account_keys(account_id)
    found = {
        int(f["seq"]): f["request_id"]
        for _id, f in await pay_store.redis.xrange(keys.shard.ledger)
        if f["account_id"] == account_id and f["detail"].startswith("automatic_recharge")
    }
    rows = await pay_db.fetch(
        "SELECT seq, request_id FROM ledger_entries WHERE account_id = $1 "
        "AND item = 'funds_added' AND detail LIKE 'automatic_recharge%'",
        account_id,
    )
    found.update({r["seq"]: r["request_id"] for r in rows})
    return [found[seq] for seq in sorted(found)]


async def leave_a_stale_mark(pay_db: Any, pay_store: Store, account_id: str) -> None:
    """What a crash between ending an episode and clearing its mark leaves: an
    ended episode whose mark (10 s old) still stops every later request."""
    episode_us = time.time_ns() // 1_000 - 10_000_000
    await pay_db.execute(
        "INSERT INTO recharge_episodes (account_id, episode_us, amount_micros, status, "
        "next_attempt_at_us) VALUES ($1, $2, $3, 'ended', 0)",
        account_id,
        episode_us,
        60 * USD,
    )
    keys = pay_store.account_keys(account_id)
    await pay_store.redis.hset(keys.account, "recharge_pending_since_us", episode_us)


async def test_recharge_intake_rides_out_postgres_failing_while_it_takes_a_request(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    workers: list[WorkerProcess],
) -> None:
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", START, "pg@example.com")
    proxy = TcpProxy("127.0.0.1", url_port(pay_settings.database_url))
    proxy.start()
    try:
        via_proxy = url_with_port(pay_settings.database_url, proxy.port)
        settings = worker_settings(pay_settings, database_url=via_proxy)
        workers.append(WorkerProcess(settings, "faults-postgres"))
        await asyncio.sleep(1.0)  # started, groups made
        proxy.stop()  # Postgres is gone for the worker
        await send_messages(pay_http, account_id, 2, "pg")
        group = pay_settings.recharge_consumer_group
        stream = pay_store.account_keys(account_id).shard.recharge

        async def taken_but_not_recorded() -> bool:
            try:
                pending = await pay_store.redis.xpending_range(stream, group, "-", "+", 100)
            except ResponseError:  # NOGROUP: the worker has not made its groups yet
                return False
            return any(p["consumer"] == "faults-postgres" for p in pending)

        await wait_until(taken_but_not_recorded, timeout_s=10)
        assert not await pay_db.fetchval(
            "SELECT 1 FROM recharge_episodes WHERE account_id = $1", account_id
        )
        await asyncio.sleep(1.0)  # a few failed rounds
        proxy.start()

        async def recharged() -> bool:
            return await balance_of(pay_http, account_id, auth) == RECHARGED

        await wait_until(recharged, timeout_s=20)
    finally:
        proxy.close()
    assert (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()["recharge"][
        "pending"
    ] is False
    assert len(await recharge_credits(pay_db, pay_store, account_id)) == 1


async def test_a_worker_killed_after_taking_a_request_leaves_it_to_another(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    workers: list[WorkerProcess],
) -> None:
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", START, "took@example.com")
    await die_at(
        crash_points.REQUEST_READ,
        "faults-took",
        pay_http,
        pay_settings,
        workers,
        account_id,
        "took",
    )
    # The request is pending under the dead consumer; another one claims it.
    workers.append(WorkerProcess(worker_settings(pay_settings), "faults-other"))

    async def recharged() -> bool:
        return await balance_of(pay_http, account_id, auth) == RECHARGED

    await wait_until(recharged, timeout_s=20)
    assert len(await recharge_credits(pay_db, pay_store, account_id)) == 1


@pytest.mark.parametrize(
    "point",
    [crash_points.CHARGED, crash_points.CHARGE_RECORDED, crash_points.CHARGE_CREDITED],
)
async def test_a_worker_killed_between_charge_and_credit_credits_once(
    point: str,
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    stripe_server: StripeServer,
    workers: list[WorkerProcess],
) -> None:
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", START, "kill@example.com")
    await die_at(point, f"faults-{point}", pay_http, pay_settings, workers, account_id, "kill")
    assert charges_of(stripe_server, account_id) == 1  # the card was charged
    # The same worker comes back (same consumer name) after its lease ran out.
    workers.append(WorkerProcess(worker_settings(pay_settings), f"faults-{point}"))

    async def settled() -> bool:
        return await pay_db.fetchval(
            "SELECT count(*) FROM recharge_episodes WHERE account_id = $1 AND status = 'open'",
            account_id,
        ) == 0 and await pay_db.fetchval(
            "SELECT bool_and(credited) FROM payments WHERE account_id = $1", account_id
        )

    await wait_until(settled, timeout_s=20)
    await asyncio.sleep(1.5)  # webhooks, repairs and more rounds: nothing more
    assert await balance_of(pay_http, account_id, auth) == RECHARGED
    assert charges_of(stripe_server, account_id) == 1
    [credit] = await recharge_credits(pay_db, pay_store, account_id)
    row = await pay_db.fetchrow(
        "SELECT payment_intent_id, status, credited FROM payments WHERE account_id = $1",
        account_id,
    )
    assert (row["payment_intent_id"], row["status"], row["credited"]) == (
        credit,
        "succeeded",
        True,
    )
    view = (await pay_http.get(f"/v1/accounts/{account_id}", headers=auth)).json()
    assert view["recharge"]["pending"] is False


async def test_a_charge_whose_answer_died_with_the_worker_is_credited_whatever_changed(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    pay_gateway: PaymentsGateway,
    stripe_server: StripeServer,
    workers: list[WorkerProcess],
) -> None:
    # The worker dies right after Stripe charged; before it comes back, another
    # credit lifts the balance above the threshold, and no webhook arrives (Stripe
    # may deliver it much later). The worker must not end the episode as "not
    # needed" without knowing of the charge: it asks Stripe about that same charge.
    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", START, "lift@example.com")
    deaf = "http://127.0.0.1:9/unreachable"
    for endpoint_id in WEBHOOK_ENDPOINT_IDS:
        register_webhook(stripe_server, endpoint_id, deaf)
    try:
        await die_at(
            crash_points.CHARGED, "faults-lift", pay_http, pay_settings, workers, account_id, "lift"
        )
        assert charges_of(stripe_server, account_id) == 1
        r = await pay_http.post(
            f"/v1/accounts/{account_id}/credits",
            headers=OPS,
            json={"credit_id": "lift", "amount_micros": 100 * USD, "reason": "test"},
        )
        assert r.status_code == 200, r.text
        workers.append(WorkerProcess(worker_settings(pay_settings), "faults-lift"))

        async def settled() -> bool:
            status = await pay_db.fetchval(
                "SELECT status FROM recharge_episodes WHERE account_id = $1", account_id
            )
            return status != "open"

        await wait_until(settled, timeout_s=20)
    finally:
        for endpoint_id in WEBHOOK_ENDPOINT_IDS:
            register_webhook(stripe_server, endpoint_id, pay_gateway.url + "/v1/stripe/webhook")
    episode = await pay_db.fetchrow(
        "SELECT status, last_reason, charge_sent FROM recharge_episodes WHERE account_id = $1",
        account_id,
    )
    assert episode["status"] == "succeeded", dict(episode)
    assert episode["charge_sent"] is None
    assert charges_of(stripe_server, account_id) == 1
    assert len(await recharge_credits(pay_db, pay_store, account_id)) == 1
    assert await balance_of(pay_http, account_id, auth) == RECHARGED + 100 * USD


async def test_the_repair_opens_a_lost_episode_and_clears_a_stale_mark(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    worker: RechargeWorker,
) -> None:
    # A request lost before it became an episode: the mark stays, nothing asks again.
    lost, lost_auth = await set_up_recharge(pay_http, "pm_card_visa", START, "lost@example.com")
    await send_messages(pay_http, lost, 2, "lost")
    keys = pay_store.account_keys(lost)
    for entry_id, fields in await pay_store.redis.xrange(keys.shard.recharge):
        if fields["account_id"] == lost:
            await pay_store.redis.xdel(keys.shard.recharge, entry_id)
    # An episode that ended while its mark stayed (a crash between the two writes).
    stale, stale_auth = await set_up_recharge(pay_http, "pm_card_visa", START, "stale@example.com")
    stale_keys = pay_store.account_keys(stale)
    await leave_a_stale_mark(pay_db, pay_store, stale)

    async def both_put_right() -> bool:
        await worker.step()
        lost_done = await balance_of(pay_http, lost, lost_auth) == RECHARGED
        mark = await pay_store.redis.hget(stale_keys.account, "recharge_pending_since_us")
        return lost_done and mark is None

    await wait_until(both_put_right, timeout_s=15, interval_s=0.05)
    # With the mark gone, the next fall below the threshold asks again, and is recharged.
    await send_messages(pay_http, stale, 2, "stale")

    async def stale_recharged() -> bool:
        await worker.step()
        return await balance_of(pay_http, stale, stale_auth) == RECHARGED

    await wait_until(stale_recharged, timeout_s=15, interval_s=0.05)


async def test_the_repair_reaches_every_account_within_its_bound(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    stripe_client: Any,
) -> None:
    """One account read per pass at most (recharge_repair_accounts_max=1): a pass
    still moves on by a chunk of shards, so a stale mark anywhere is found within
    shard_count / 32 passes."""
    from metering.payments.recharge_repair import SHARDS_PER_ROUND_TRIP

    stale, _auth = await set_up_recharge(pay_http, "pm_card_visa", START, "bound@example.com")
    keys = pay_store.account_keys(stale)
    await leave_a_stale_mark(pay_db, pay_store, stale)
    narrow = pay_settings.replace(recharge_repair_accounts_max=1)
    w = RechargeWorker(pay_store, pay_db, stripe_client, narrow, consumer="tests-bound")
    passes_max = -(-pay_settings.shard_count // SHARDS_PER_ROUND_TRIP)
    for _ in range(passes_max):
        await w.repair.stranded_marks()
        if await pay_store.redis.hget(keys.account, "recharge_pending_since_us") is None:
            return
    raise AssertionError(f"the stale mark outlived {passes_max} repair passes")


async def test_card_and_settings_a_redis_loss_took_back_are_copied_again(
    pay_http: httpx.AsyncClient,
    pay_db: Any,
    pay_store: Store,
    pay_settings: Settings,
    stripe_client: Any,
) -> None:
    """Found by the simulation: a Redis that lost its last second (a host crash with
    appendfsync everysec) holds an older copy of the card and recharge settings than
    Postgres, whose sync record still says the copy was made. The repair compares
    the versions and copies the newer settings again."""
    from metering.payments.recharge_repair import SHARDS_PER_ROUND_TRIP

    account_id, auth = await set_up_recharge(pay_http, "pm_card_visa", 80 * USD, "lost@example.com")
    keys = pay_store.account_keys(account_id)
    fields = ("payment_settings_version", "recharge_amount_micros", "recharge_enabled")
    before = dict(zip(fields, await pay_store.redis.hmget(keys.account, *fields), strict=True))
    r = await pay_http.put(
        f"/v1/accounts/{account_id}/recharge",
        headers=auth,
        json={
            "amount_micros": 75 * USD,
            "threshold_micros": 10 * USD,
            "failure_email": "lost@example.com",
            "enabled": False,
        },
    )
    assert r.status_code == 200, r.text
    # The lost second: Redis is back to the copy it held before the change.
    await pay_store.redis.hset(keys.account, mapping=before)
    w = RechargeWorker(pay_store, pay_db, stripe_client, pay_settings, consumer="tests-lost")
    passes_max = -(-pay_settings.shard_count // SHARDS_PER_ROUND_TRIP)
    for _ in range(passes_max):
        await w.repair.stranded_marks()
        amount, enabled = await pay_store.redis.hmget(
            keys.account, "recharge_amount_micros", "recharge_enabled"
        )
        if (amount, enabled) == (str(75 * USD), "0"):
            return
    raise AssertionError(f"Redis kept the settings it lost the copy of: {amount}, {enabled}")
