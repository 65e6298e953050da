"""The thinnest HTTP debit, and the Postgres row-lock design behind the same HTTP stack.

`python -m bench.bare_app` serves, with the gateway's server settings (uvicorn,
uvloop, httptools, METERING_WORKERS processes, no access log):

    POST /debit        parse the body, one EVALSHA of debit.lua through redis-py,
                       one call at a time (no auth, no validation, no automatic
                       pipelining): the naive stack the product is compared with
    POST /pg-debit     the same debit as one Postgres transaction (bench/postgres_row_lock.py)

Bodies are the switch's message body: {"account_id", "message_id", "direction"}.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.postgres_row_lock import Refused, pg_debit
from gateway.__main__ import server_options
from metering.debits import debit_call
from metering.settings import Settings
from metering.store import open_store


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code, media_type="application/json")


def create_app(settings: Settings) -> Starlette:
    # The naive stack: every EVALSHA on its own through redis-py.
    settings = settings.replace(redis_pipeline=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = await open_store(settings)
        # The pool is opened on first use: the Lua routes need no Postgres.
        pg: dict[str, Any] = {"pool": None, "lock": asyncio.Lock()}
        try:
            yield {"store": store, "pg": pg}
        finally:
            if pg["pool"] is not None:
                await pg["pool"].close()
            await store.redis.aclose()

    async def debit(request: Request) -> Response:
        b = orjson.loads(await request.body())
        store = request.state.store
        # debit.lua's keys and arguments for an outbound text, as the gateway sends them.
        keys, args = debit_call(
            store, b["account_id"], "sms_outbound", "message", b["message_id"], "outbound"
        )
        r = await store.scripts.debit(store.redis, keys, args)
        if r[0] != "ok":
            return _json({"error": r[0]}, 402)
        return _json({"charged_micros": int(r[2]), "balance_micros": int(r[3])})

    async def debit_pg(request: Request) -> Response:
        b = orjson.loads(await request.body())
        holder = request.state.pg
        if holder["pool"] is None:
            async with holder["lock"]:
                if holder["pool"] is None:
                    holder["pool"] = await asyncpg.create_pool(
                        settings.database_url,
                        min_size=settings.database_pool_max,
                        max_size=settings.database_pool_max,
                    )
        try:
            answer = await pg_debit(holder["pool"], b["account_id"], b["message_id"])
        except Refused:
            return _json({"error": "insufficient_funds"}, 402)
        return _json(answer)

    return Starlette(
        routes=[
            Route("/debit", debit, methods=["POST"]),
            Route("/pg-debit", debit_pg, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    return create_app(Settings.from_env())


def main() -> None:
    settings = Settings.from_env()
    # The gateway's own server options, so the comparison is like for like.
    uvicorn.run("bench.bare_app:app_from_env", factory=True, **server_options(settings))


if __name__ == "__main__":
    main()
