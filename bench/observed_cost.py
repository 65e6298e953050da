"""The CPU one gateway process spends per switch request, with request metrics
and ids on and off, measured in one process: two apps built by
gateway.app.create_app (METERING_REQUEST_METRICS=1 and =0) answer the same
`POST /v1/messages` (a fresh message id each, one hot account, 32 in flight at
once) through the whole ASGI stack (observer, security headers, fast path, the pipelined EVALSHA
to the bench's Redis), alternating in rounds; CPU time is this process's own
(time.process_time), so the other tenants of a shared machine disturb it far
less than a wrk run's throughput.

    python -m bench.observed_cost --redis-url redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
from typing import Any

from gateway.app import create_app
from metering.settings import Settings

ROUNDS = 16
REQUESTS_PER_ROUND = 8_000
# Requests in flight at once, as a switch's keep-alive connections keep them (the
# pipeline then writes a tick's calls together, as under load).
CONCURRENCY = 32
BODY = b'{"account_id":"%s","message_id":"%s","direction":"outbound"}'


async def _cpu_per_request(
    app: Any, state: dict[str, Any], account: str, n: int, tag: str
) -> float:
    token = state["settings"].switch_token.encode()
    sent: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    began = time.process_time()
    for i in range(n):
        body = BODY % (account.encode(), f"{tag}-{i}".encode())

        async def receive(body: bytes = body) -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/messages",
            "raw_path": b"/v1/messages",
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", b"Bearer " + token),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
            "state": dict(state),
        }
        await app(scope, receive, send)
    spent = time.process_time() - began
    if sent.count(200) != n:
        raise RuntimeError(f"{n - sent.count(200)} of {n} debits were not answered 200")
    return spent / n * 1e6


async def measure(
    settings: Settings, account: str, rounds: int = ROUNDS, n: int = REQUESTS_PER_ROUND
) -> dict[bool, list[float]]:
    """µs of CPU per request for each setting, one figure per round."""
    apps = {on: create_app(settings.replace(request_metrics=on)) for on in (False, True)}
    out: dict[bool, list[float]] = {False: [], True: []}
    async with contextlib.AsyncExitStack() as stack:
        states = {
            on: await stack.enter_async_context(app.router.lifespan_context(app))
            for on, app in apps.items()
        }
        for on in (False, True):  # warm both (connections, the script cache)
            await _cpu_per_request(apps[on], states[on], account, 200, f"warm-{on}")
        for r in range(rounds):
            # Each order half the time: whatever the first of a pair leaves behind
            # (publishes to drain, garbage) falls on both settings alike.
            for on in (False, True) if r % 2 == 0 else (True, False):
                tag = f"r{r}-{int(on)}-{time.monotonic_ns()}"
                gc.collect()
                began = time.process_time()
                each = n // CONCURRENCY
                await asyncio.gather(
                    *(
                        _cpu_per_request(apps[on], states[on], account, each, f"{tag}-{k}")
                        for k in range(CONCURRENCY)
                    )
                )
                out[on].append((time.process_time() - began) / (each * CONCURRENCY) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.observed_cost", description=__doc__)
    parser.add_argument("--account", default="bench-hot", help="an account with money")
    args = parser.parse_args()
    figures = asyncio.run(measure(Settings.from_env(), args.account))
    for on in (False, True):
        print(f"request metrics {'on ' if on else 'off'}: {figures[on]} us/request")


if __name__ == "__main__":
    main()
