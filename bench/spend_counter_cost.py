"""What the burn-rate counter costs the debit script inside Redis: debit.lua as
shipped (HINCRBY + EXPIRE of the shard's spend bucket, metering/burn.py) against
the same script without that line, on a private redis-server, alternating 30
rounds of 1,000 pipelined calls; Redis's own usec_per_call (INFO commandstats).

    .venv/bin/python -m bench.spend_counter_cost
"""

from __future__ import annotations

import asyncio
import statistics

import redis as redis_sync

from devkit.testing import RATE_CARD, RedisServer
from metering import accounts, debits
from metering.rate_card import RateCard
from metering.scripts import LuaScript
from metering.settings import Settings
from metering.store import open_store


async def main() -> None:
    server = RedisServer()
    try:
        settings = Settings().replace(redis_url=server.url, ledger_backlog_max=10**9)
        store = await open_store(settings)
        await accounts.create_account(store, "acct", RateCard.parse(RATE_CARD))
        await store.redis.hset(store.account_keys("acct").account, "balance", 10**14)
        src = store.scripts.debit.source
        plain = LuaScript(
            "debit_plain", src.replace("count_spend(KEYS[8], ARGV[1], cost, ARGV[13])", "")
        )
        await store.redis.script_load(plain.source)
        sync = redis_sync.Redis.from_url(server.url)
        per = {"with counter": [], "without": []}
        n = 0
        for _round in range(30):
            for name, script in (("with counter", store.scripts.debit), ("without", plain)):
                sync.config_resetstat()
                async with store.redis.pipeline(transaction=False) as pipe:
                    for _ in range(1000):
                        n += 1
                        keys, args = debits.debit_call(
                            store, "acct", "sms_outbound", "message", f"r{n}", "outbound"
                        )
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    await pipe.execute()
                await store.redis.xtrim(store.account_keys("acct").shard.ledger, maxlen=0)
                per[name].append(sync.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
        for name, xs in per.items():
            print(
                f"{name}: median {statistics.median(xs):.2f} us per call in Redis, "
                f"min {min(xs):.2f} (30 x 1,000 calls)"
            )
        await store.redis.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
