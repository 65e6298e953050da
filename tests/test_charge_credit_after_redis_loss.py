"""Found by the simulation: after Redis loses its last second (a host crash with
appendfsync everysec), a Stripe charge whose credit the writer had already
committed is taken back from the ledger by the ledger check (fast-forward), but
the record that makes every later path answer that credit again was lost with
Redis. The next path to learn of the charge (the webhook, which Stripe sends a
second later, or the customer's retry) credited it a second time."""

from __future__ import annotations

import subprocess
import sys
import uuid

from devkit.testing import RATE_CARD, ROOT
from metering.ledger import registry
from metering.ledger.recovery import catch_up
from metering.payments.charges import PAY_NOW, Charge, credit_charge
from metering.rate_card import RateCard
from tests.fixtures_ledger import LedgerWorld, ledger_world

USD = 1_000_000


def drain(world: LedgerWorld) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metering", "--log-level", "warning", "ledger-writer", "--drain"],
        cwd=ROOT,
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


async def test_a_charge_credited_before_a_redis_loss_is_not_credited_again() -> None:
    async with ledger_world() as world:
        store, pool = world.store, world.pool
        account_id = f"lost-{uuid.uuid4().hex[:8]}"
        await registry.create_account(store, pool, account_id, RateCard.parse(RATE_CARD))
        keys = store.account_keys(account_id)
        before = await store.redis.hgetall(keys.account)
        charge = Charge(account_id, "p-1", PAY_NOW, 25 * USD, "pi_lostsecond1")
        await world.conn.execute(
            "INSERT INTO payments (account_id, payment_id, kind, amount_micros, status) "
            "VALUES ($1, 'p-1', 'pay_now', $2, 'pending')",
            account_id,
            25 * USD,
        )
        first = await credit_charge(store, pool, charge)
        assert first.balance_micros == 25 * USD
        drain(world)  # the writer committed the credit's entry before the crash
        # The lost second: Redis is back to what it held before the credit.
        await store.redis.hset(keys.account, mapping={"balance": before["balance"], "seq": "0"})
        await store.redis.delete(keys.charge_credit("pi_lostsecond1"))
        # The ledger check (at gateway start, or in rebuild) fast-forwards the account.
        await catch_up(store, world.conn)
        assert (await store.redis.hget(keys.account, "balance")) == str(25 * USD)
        # The webhook (or the customer's retry) arrives: it answers the credit made.
        again = await credit_charge(store, pool, charge)
        assert again.balance_micros == 25 * USD
        assert (await store.redis.hget(keys.account, "balance")) == str(25 * USD)
        drain(world)
        credits = await world.conn.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND request_id = $2",
            account_id,
            "pi_lostsecond1",
        )
        assert credits == 1
