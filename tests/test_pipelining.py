"""Automatic pipelining of script calls (metering/pipelining.py) on a real
redis-server of the test's own: calls of one tick share a write, each caller
gets its own answer or error, NOSCRIPT reloads, bounds hold, and a timeout
fails only the calls it concerns without ever handing a late reply to another
caller. The cluster case is in tests/test_redis_cluster.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_async
from redis import exceptions as redis_errors

from devkit.testing import RATE_CARD, RedisServer
from metering import accounts, credits, debits
from metering.errors import InsufficientFunds, Unavailable, UnknownAccount
from metering.metrics import METRICS
from metering.pipelining import RespConnection, ScriptPipeline
from metering.rate_card import RateCard
from metering.scripts import LuaScript
from metering.settings import Settings
from metering.store import Store, open_store
from tests.conftest import new_account_id, test_settings

SMS_MICROS = RATE_CARD["sms_outbound_micros"]

# Keeps Redis busy for ARGV[1] microseconds (by Redis's clock), then answers
# ARGV[2]: a slow command in the middle of a pipeline.
BUSY = LuaScript(
    "busy",
    """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
repeat
  t = redis.call('TIME')
until tonumber(t[1]) * 1000000 + tonumber(t[2]) - start >= tonumber(ARGV[1])
return ARGV[2]
""",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    # SCRIPT FLUSH and long scripts are server-wide: a server of this module's own.
    s = RedisServer(data_dir=tmp_path_factory.mktemp("pipelining-redis"))
    yield s
    s.stop()


async def _store(server: RedisServer, **changes: Any) -> Store:
    return await open_store(test_settings(redis_url=server.url, **changes))


def _pipeline(store: Store) -> ScriptPipeline:
    pipeline = store.scripts.debit.pipeline
    assert pipeline is not None and pipeline.client is store.redis
    return pipeline


def busy(store: Store, microseconds: int, answer: str) -> asyncio.Future[Any]:
    """BUSY through the store's pipeline, as a task started now."""
    BUSY.pipeline = _pipeline(store)
    return asyncio.ensure_future(BUSY(store.redis, [], [microseconds, answer]))


def _round_trips(script: str, above_s: float = 0.0) -> int:
    """Round trips of `script` recorded in this process's metrics (those in the
    buckets above the bound `above_s`)."""
    histogram = METRICS.script_calls
    slots = histogram.totals.get((script,))
    if slots is None:
        return 0
    first = sum(1 for bound in histogram.bounds if bound <= above_s)
    return int(sum(slots[first:-1]))


def _connection(store: Store) -> RespConnection:
    (connection,) = _pipeline(store).connections().values()
    return connection


async def _funded(store: Store, balance_micros: int) -> str:
    account = new_account_id("pipe")
    await accounts.create_account(store, account, RateCard.parse(RATE_CARD))
    if balance_micros:
        await credits.add_funds(store, account, "c1", balance_micros, "ops_credit", "test")
    return account


async def test_calls_of_one_tick_share_a_write_and_each_gets_its_own_answer(
    server: RedisServer,
) -> None:
    store = await _store(server)
    try:
        rich = await _funded(store, 1_000 * SMS_MICROS)
        poor = await _funded(store, 13 * SMS_MICROS)  # exactly 13 texts
        await debits.message(store, rich, "warm-up", "outbound")  # opens the connection
        writes = _connection(store).writes
        recorded = _round_trips("debit")
        calls = []
        for i in range(40):
            calls.append(debits.message(store, rich, f"r-{i}", "outbound"))
            calls.append(debits.message(store, poor, f"p-{i}", "inbound" if i % 2 else "outbound"))
        calls.append(debits.message(store, "no-such-account", "x", "outbound"))
        answers = await asyncio.gather(*calls, return_exceptions=True)
        # 81 calls, all started in one tick: one write (the batch bound is 256).
        assert _connection(store).writes - writes == 1
        # Each call's round trip is recorded, once (as one observation of 81).
        assert _round_trips("debit") - recorded == 81

        rich_answers = answers[0:80:2]
        assert all(a.item == "sms_outbound" for a in rich_answers)  # type: ignore[union-attr]
        # Each caller got the answer of its own call: 40 distinct seqs, 2..41.
        assert sorted(a.seq for a in rich_answers) == list(range(3, 43))  # type: ignore[union-attr]
        poor_answers = answers[1:80:2]
        charged = [a for a in poor_answers if not isinstance(a, Exception)]
        refused = [a for a in poor_answers if isinstance(a, InsufficientFunds)]
        assert len(charged) + len(refused) == 40
        # Inbound texts cost less, so more than 13 fit: the sum is what matters.
        spent = sum(c.charged_micros for c in charged)  # type: ignore[union-attr]
        assert spent <= 13 * SMS_MICROS
        for i, answer in enumerate(poor_answers):
            if not isinstance(answer, Exception):
                assert answer.item == ("sms_inbound" if i % 2 else "sms_outbound")
        assert isinstance(answers[80], UnknownAccount)
        view = await accounts.get_account(store, poor)
        assert view.balance_micros == 13 * SMS_MICROS - spent
    finally:
        await store.aclose()


async def test_an_error_reply_fails_only_its_own_call(server: RedisServer) -> None:
    store = await _store(server)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        keys = store.account_keys(account)
        bad = store.scripts.debit(
            store.redis,
            [keys.account, keys.request("message", "bad"), keys.shard.ledger, keys.shard.recharge],
            # A backlog bound that is not a number: the script fails before it writes.
            [account, "sms_outbound", "sms_outbound_micros", "bad", "outbound", 60, "many"]
            + [store.settings.live_channel, ""],
        )
        answers = await asyncio.gather(
            debits.message(store, account, "a", "outbound"),
            bad,
            debits.message(store, account, "b", "outbound"),
            return_exceptions=True,
        )
        assert isinstance(answers[1], redis_errors.ResponseError), answers[1]
        assert [a.seq for a in (answers[0], answers[2])] == [2, 3]  # type: ignore[union-attr]
        view = await accounts.get_account(store, account)
        assert view.balance_micros == 98 * SMS_MICROS
    finally:
        await store.aclose()


async def test_noscript_reloads_and_every_caller_still_gets_its_answer(
    server: RedisServer,
) -> None:
    store = await _store(server)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        await store.redis.script_flush()
        answers = await asyncio.gather(
            *(debits.message(store, account, f"m-{i}", "outbound") for i in range(20))
        )
        assert sorted(a.seq for a in answers) == list(range(2, 22))
        assert await store.redis.script_exists(store.scripts.debit.sha) == [True]
    finally:
        await store.aclose()


async def test_calls_let_in_at_a_full_queue_still_run_after_noscript(
    server: RedisServer,
) -> None:
    # A Redis restart empties its script cache: under load every queued call
    # meets NOSCRIPT at once, and its reload must not be refused by the bound.
    store = await _store(server, redis_pipeline_pending_max=10)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        await store.redis.script_flush()
        answers = await asyncio.gather(
            *(debits.message(store, account, f"m-{i}", "outbound") for i in range(10)),
            return_exceptions=True,
        )
        assert sorted(a.seq for a in answers) == list(range(2, 12)), answers  # type: ignore[union-attr]
    finally:
        await store.aclose()


async def test_idle_connections_meet_a_restarted_redis_without_an_error(
    tmp_path: Path,
) -> None:
    # Pooled sockets that sat idle through a restart do not know it: each one's
    # next command would fail once (a 503 at the gateway) unless sent again.
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always", data_dir=tmp_path)
    store = await _store(server)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        await accounts.get_account(store, account)
        server.restart(kill=True)
        view = await accounts.get_account(store, account)
        assert view.balance_micros == 100 * SMS_MICROS
        answer = await debits.message(store, account, "after-restart", "outbound")
        assert answer.balance_micros == 99 * SMS_MICROS
    finally:
        await store.aclose()
        server.stop()


async def test_a_write_carries_at_most_the_batch_bound(server: RedisServer) -> None:
    store = await _store(server, redis_pipeline_batch_max=8)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        writes = _connection(store).writes
        answers = await asyncio.gather(
            *(debits.message(store, account, f"m-{i}", "outbound") for i in range(50))
        )
        assert len({a.seq for a in answers}) == 50
        assert _connection(store).writes - writes == 7  # ceil(50 / 8)
    finally:
        await store.aclose()


async def test_a_slow_redis_cannot_grow_the_queue(server: RedisServer) -> None:
    store = await _store(server, redis_pipeline_pending_max=10)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        # Redis is busy for 0.3 s with the first call; 9 more fit, then refusals.
        slow = busy(store, 300_000, "done")
        await asyncio.sleep(0)  # the busy call is queued first
        answers = await asyncio.gather(
            *(debits.message(store, account, f"m-{i}", "outbound") for i in range(30)),
            return_exceptions=True,
        )
        assert await slow == "done"
        assert sum(1 for a in answers if isinstance(a, Unavailable)) == 21
        charged = [a for a in answers if not isinstance(a, Exception)]
        assert len(charged) == 9
        view = await accounts.get_account(store, account)
        assert view.balance_micros == 91 * SMS_MICROS  # refusals charged nothing
    finally:
        await store.aclose()


async def test_a_timeout_fails_only_its_calls_and_late_replies_reach_nobody(
    server: RedisServer,
) -> None:
    """Replies come in order: a reply that arrives after its call timed out must
    be dropped, never handed to the next caller."""
    store = await _store(server, redis_timeout_s=1.0)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        connection = _connection(store)
        debits_slow, busy_slow = _round_trips("debit", 1.0), _round_trips("busy", 1.0)
        debits_all, busy_all = _round_trips("debit"), _round_trips("busy")
        # t=0: A keeps Redis busy 0.7 s (answered in time); t~0.1: B keeps it busy
        # another 0.7 s (answered at ~1.4 s, past its deadline at ~1.1 s), and
        # debits queued behind B time out too. A's answer at 0.7 s shows the
        # connection alive, so it stays open and the late replies are dropped.
        a = busy(store, 700_000, "A")
        await asyncio.sleep(0.1)
        b = busy(store, 700_000, "B")
        behind = [
            asyncio.ensure_future(debits.message(store, account, f"late-{i}", "outbound"))
            for i in range(5)
        ]
        assert await a == "A"
        with pytest.raises(redis_errors.TimeoutError):
            await b
        for call in behind:
            with pytest.raises(redis_errors.TimeoutError):
                await call
        assert connection.timeouts == 6
        # A timed-out call's round trip is recorded as at least the timeout.
        assert _round_trips("busy", 1.0) - busy_slow == 1
        assert _round_trips("debit", 1.0) - debits_slow == 5
        await asyncio.sleep(0.6)  # B's and the debits' replies arrive now, late
        # The late debits did run in Redis (seq 2..6); the next callers get their
        # own answers on the same connection.
        answers = await asyncio.gather(
            *(debits.message(store, account, f"next-{i}", "outbound") for i in range(5))
        )
        assert _connection(store) is connection
        assert sorted(c.seq for c in answers) == list(range(7, 12))
        assert all(not c.replayed for c in answers)
        # A retry of a timed-out debit is answered from its idempotency key.
        retry = await debits.message(store, account, "late-0", "outbound")
        assert retry.replayed and retry.seq in range(2, 7)
        # Each call recorded once: the late replies added nothing.
        assert _round_trips("busy") - busy_all == 2
        assert _round_trips("debit") - debits_all == 5 + 5 + 1
    finally:
        await store.aclose()


async def test_a_connection_silent_for_a_whole_timeout_is_replaced(server: RedisServer) -> None:
    store = await _store(server, redis_timeout_s=0.5)
    other = redis_async.Redis.from_url(server.url, decode_responses=True)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        first = _connection(store)
        # Another client stalls the server 1.2 s: nothing answers our connection.
        stall = asyncio.ensure_future(BUSY.call_one(other, [], [1_200_000, "stalled"]))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(redis_errors.TimeoutError):
            await debits.message(store, account, "during", "outbound")
        assert time.monotonic() - started < 1.0  # failed at its deadline, not at the stall's end
        assert first.closed
        assert await stall == "stalled"
        charge = await debits.message(store, account, "after", "outbound")
        assert _connection(store) is not first and charge.balance_micros < 100 * SMS_MICROS
    finally:
        await other.aclose()
        await store.aclose()


async def test_a_caller_that_gives_up_does_not_disturb_the_others(server: RedisServer) -> None:
    store = await _store(server)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        calls = [
            asyncio.ensure_future(debits.message(store, account, f"m-{i}", "outbound"))
            for i in range(10)
        ]
        await asyncio.sleep(0)
        calls[3].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[3], asyncio.CancelledError)
        kept = [c for i, c in enumerate(done) if i != 3]
        assert len({c.seq for c in kept}) == 9  # type: ignore[union-attr]
        # The cancelled call was written before it was cancelled: it charged.
        again = await debits.message(store, account, "m-3", "outbound")
        assert again.replayed
    finally:
        await store.aclose()


async def test_redis_restart_fails_calls_in_flight_then_reconnects(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path)
    try:
        store = await _store(server)
        account = await _funded(store, 0)
        server.restart(kill=True)  # data gone with the crash (no persistence)
        await asyncio.sleep(0.2)  # the loop sees the connection close
        with pytest.raises(UnknownAccount):
            # The next call notices the closed connection and opens a new one;
            # the scripts are gone too (NOSCRIPT reloads them).
            await debits.message(store, account, "m", "outbound")
        await store.aclose()
    finally:
        server.stop()


async def test_the_pipeline_can_be_switched_off(server: RedisServer) -> None:
    store = await open_store(
        Settings.from_env({}).replace(redis_url=server.url, redis_pipeline=False)
    )
    try:
        assert store.scripts.debit.pipeline is None
        account = await _funded(store, 10 * SMS_MICROS)
        charge = await debits.message(store, account, "m", "outbound")
        assert charge.seq == 2
    finally:
        await store.aclose()


async def test_a_list_of_calls_is_written_at_once_each_with_its_own_outcome(
    server: RedisServer,
) -> None:
    """run_many (the batches' path): one write, no task per call; a failing call
    and calls past the queue bound get their own error, the others their answer."""
    store = await _store(server, redis_pipeline_pending_max=12)
    try:
        account = await _funded(store, 100 * SMS_MICROS)
        calls: list[Any] = [
            debits.message_call(store, account, f"m-{i}", "outbound") for i in range(15)
        ]
        keys, args = calls[1]
        calls[1] = (keys, [*args[:6], "many", *args[7:]])  # fails inside Redis
        writes = _connection(store).writes
        answers = await store.scripts.debit.run_many(store.redis, calls)
        assert _connection(store).writes - writes == 1
        assert isinstance(answers[1], redis_errors.ResponseError)
        assert all(isinstance(a, Unavailable) for a in answers[12:])  # past the bound
        seqs = [a[5] for i, a in enumerate(answers[:12]) if i != 1]
        assert seqs == list(range(2, 13))  # in order, one seq each
        charges = await debits.debit_many(store, [calls[0], ValueError("bad item"), calls[2]])
        assert [c.replayed for c in charges if not isinstance(c, Exception)] == [True, True]
        assert isinstance(charges[1], ValueError)
    finally:
        await store.aclose()


async def test_a_channel_reader_hands_over_every_message_in_order(tmp_path: Path) -> None:
    """The live hub's subscription (metering/pipelining.py subscribe): every
    published message, in order, many per read; a lost server sets `lost`."""
    from metering.pipelining import subscribe

    server = RedisServer(data_dir=tmp_path)
    publisher = redis_async.Redis.from_url(server.url)
    try:
        got: list[bytes] = []
        all_in = asyncio.Event()

        def on_message(data: bytes) -> None:
            got.append(data)
            if len(got) == 2_000:
                all_in.set()

        reader = await subscribe(server.url, "chan", on_message, 5.0, "test-reader")
        sent = [f"change-{i}".encode() for i in range(2_000)]
        async with publisher.pipeline(transaction=False) as pipe:
            for data in sent:
                pipe.publish("chan", data)
            receivers = await pipe.execute()
        assert set(receivers) == {1}
        await asyncio.wait_for(all_in.wait(), 5)
        assert got == sent
        assert not reader.lost.is_set()
        server.restart(kill=True)
        await asyncio.wait_for(reader.lost.wait(), 5)
        reader.close()
    finally:
        await publisher.aclose()
        server.stop()
