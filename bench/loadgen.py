"""The Python load generator, run as its own process: `python -m bench.loadgen '<json>'`.

Modes (the JSON's "mode"), each printing one JSON line of figures at the end:

- evalsha: closed loop; `concurrency` tasks each call debit.lua by EVALSHA, no
  HTTP: through redis-py's asyncio client one call at a time, or with
  "pipeline": true through the gateway's automatic pipelining
  (metering/pipelining.py): the Python-client ceilings.
- debit-open: open loop at a fixed `rate_rps` of SMS debits over HTTP keep-alive.
  Request i is due at start + i / rate; its latency is measured from that due
  time, not from when it was sent, so a stalled server cannot hide its stall
  by slowing the client down (no coordinated omission).
- debit-closed: closed loop of SMS debits over HTTP, used when wrk is not installed.
- push: `sockets` live websockets open, debits at a fixed rate, time from each
  debit's HTTP answer to its frame on the account's socket.
- calls: closed loop; `concurrency` tasks each run reserve, extend, commit cycles.

Latencies are kept whole (a list of floats) and cut into percentiles at the end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import resource
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import uvloop

CONNECT_TIMEOUT_S = 5.0
SOCKET_OPEN_BATCH = 50
TICK_S = 0.001
PUSH_SETTLE_S = 0.5


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(latencies_s)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            self.waiter.set_exception(RuntimeError("response without content-length"))
            return
        stop = head.find(b"\r\n", at)
        length = int(head[at + 15 : stop if stop > 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("connection closed"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def connect(host: str, port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(HttpConnection, host, port), CONNECT_TIMEOUT_S
    )
    return proto


def post(host: str, port: int, path: str, token: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def account_for(i: int, accounts: int) -> str:
    return "bench-hot" if accounts == 1 else f"bench-{i % accounts}"


async def run_evalsha(cfg: dict[str, Any]) -> dict[str, Any]:
    from metering.debits import debit_call
    from metering.settings import Settings
    from metering.store import open_store

    settings = Settings.from_env({}).replace(
        redis_url=cfg["redis_url"],
        redis_connections_max=cfg["concurrency"],
        ledger_backlog_max=cfg["ledger_backlog_max"],
        redis_pipeline=bool(cfg.get("pipeline", False)),
    )
    store = await open_store(settings)
    nonce = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + cfg["seconds"]
    counter = iter(range(1 << 62))

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            i = next(counter)
            account_id = account_for(i, cfg["accounts"])
            request_id = f"{nonce}-{i}"
            keys, args = debit_call(
                store, account_id, "sms_outbound", "message", request_id, "outbound"
            )
            t0 = time.perf_counter()
            r = await store.scripts.debit(store.redis, keys, args)
            latencies.append(time.perf_counter() - t0)
            if r[0] != "ok":
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cfg["concurrency"])))
    elapsed = time.perf_counter() - started
    await store.redis.aclose()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        **percentiles_ms(latencies),
    }


class ConnectionPool:
    """Keep-alive connections handed out one request at a time, opened on demand up to a bound."""

    def __init__(self, host: str, port: int, size_max: int) -> None:
        self.host, self.port, self.size_max = host, port, size_max
        self.idle: collections.deque[HttpConnection] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[HttpConnection]] = collections.deque()
        self.opened = 0

    async def prewarm(self, count: int) -> None:
        for _ in range(min(count, self.size_max)):
            self.idle.append(await connect(self.host, self.port))
            self.opened += 1

    async def acquire(self) -> HttpConnection:
        if self.idle:
            return self.idle.popleft()
        if self.opened < self.size_max:
            self.opened += 1
            return await connect(self.host, self.port)
        waiter: asyncio.Future[HttpConnection] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, conn: HttpConnection) -> None:
        if self.waiters:
            self.waiters.popleft().set_result(conn)
        else:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


class OpenLoopConnection(asyncio.Protocol):
    """A keep-alive connection of the open-loop client, driven by callbacks only
    (no task or future per request: the client must cost little CPU, since it
    shares two cores with the server it measures)."""

    def __init__(self, client: OpenLoopClient) -> None:
        self.client = client
        self.buf = bytearray()
        self.due = 0.0
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.idle.append(self)

    def send(self, data: bytes, due: float) -> None:
        self.due = due
        self.busy = True
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        at = self.buf.find(b"content-length:", 0, end)
        if at < 0:
            at = self.buf.lower().find(b"content-length:", 0, end)
        stop = self.buf.find(b"\r\n", at)
        total = end + 4 + int(self.buf[at + 15 : stop])
        if len(self.buf) < total:
            return
        status = int(self.buf[9:12])
        del self.buf[:total]
        self.busy = False
        self.client.answered(self, status, time.perf_counter() - self.due)

    def connection_lost(self, exc: Exception | None) -> None:
        # A closed connection must not be handed a request that nobody answers.
        self.client.lost += 1
        if self in self.client.idle:
            self.client.idle.remove(self)


class OpenLoopClient:
    """Request i is due at start + i / rate. Due requests go out on an idle
    connection, or wait in `backlog` for one; either way the clock of each
    started at its due time."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rate = float(cfg["rate_rps"])
        self.total = max(1, int(self.rate * cfg["seconds"]))
        # Round robin (FIFO), so no connection idles past the server's keep-alive timeout.
        self.idle: collections.deque[OpenLoopConnection] = collections.deque()
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.lost = 0
        self.sent = 0
        self.start = 0.0
        self.lag_max_s = 0.0
        self.done: asyncio.Future[None] | None = None
        # The head up to Content-Length is built once.
        host, port = cfg["host"], cfg["port"]
        self.nonce = uuid.uuid4().hex[:8]
        self.head = (
            f"POST {cfg['path']} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {cfg['token']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def request(self, i: int) -> bytes:
        body = (
            f'{{"account_id":"{account_for(i, self.cfg["accounts"])}",'
            f'"message_id":"{self.nonce}-{i}","direction":"outbound"}}'
        ).encode()
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def tick(self) -> None:
        """Send (or queue) everything now due, then sleep until the next is due."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        while self.sent < self.total:
            due = self.start + self.sent / self.rate
            if due > now:
                break
            self.lag_max_s = max(self.lag_max_s, now - due)
            if self.idle:
                self.idle.popleft().send(self.request(self.sent), due)
            else:
                self.backlog.append((self.sent, due))
            self.sent += 1
        if self.sent < self.total:
            # The loop's timers tick in milliseconds: a shorter wait would spin and
            # take the CPU the server needs. Requests due within the millisecond go
            # out together, a little late, and that lateness counts in their latency.
            wait_s = self.start + self.sent / self.rate - now
            loop.call_later(max(TICK_S, wait_s), self.tick)

    def answered(self, conn: OpenLoopConnection, status: int, latency_s: float) -> None:
        self.latencies.append(latency_s)
        self.statuses[status] += 1
        if self.backlog:
            i, due = self.backlog.popleft()
            conn.send(self.request(i), due)
        else:
            self.idle.append(conn)
        if len(self.latencies) == self.total and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        for _ in range(cfg["connections"]):
            await asyncio.wait_for(
                loop.create_connection(lambda: OpenLoopConnection(self), cfg["host"], cfg["port"]),
                CONNECT_TIMEOUT_S,
            )
        conns = list(self.idle)
        self.done = loop.create_future()
        self.start = time.perf_counter() + 0.05
        loop.call_later(0.05, self.tick)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done, cfg["seconds"] + 30)
        elapsed = time.perf_counter() - self.start
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        unanswered = self.total - len(self.latencies)
        return {
            "requests": len(self.latencies),
            "errors": len(self.latencies) - ok + unanswered,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "offered_rps": self.rate,
            "seconds": round(elapsed, 3),
            "throughput_rps": round(ok / elapsed, 1),
            "connections": cfg["connections"],
            "send_lag_max_ms": round(self.lag_max_s * 1000, 3),
            "connections_lost": self.lost,
            "unanswered": unanswered,
            **percentiles_ms(self.latencies),
        }


async def run_debit_open(cfg: dict[str, Any]) -> dict[str, Any]:
    return await OpenLoopClient(cfg).run()


async def run_debit_closed(cfg: dict[str, Any]) -> dict[str, Any]:
    """The fallback for wrk: `concurrency` connections, each sending its next debit
    as soon as the last is answered."""
    host, port, path, token = cfg["host"], cfg["port"], cfg["path"], cfg["token"]
    nonce = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    deadline = time.perf_counter() + cfg["seconds"]
    counter = iter(range(1 << 62))

    async def worker() -> None:
        conn = await connect(host, port)
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                data = post(
                    host,
                    port,
                    path,
                    token,
                    {
                        "account_id": account_for(i, cfg["accounts"]),
                        "message_id": f"{nonce}-{i}",
                        "direction": "outbound",
                    },
                )
                t0 = time.perf_counter()
                status, _ = await conn.request(data)
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1
        finally:
            if conn.transport is not None:
                conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cfg["concurrency"])))
    elapsed = time.perf_counter() - started
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "requests": len(latencies),
        "errors": len(latencies) - ok,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(ok / elapsed, 1),
        **percentiles_ms(latencies),
    }


async def run_calls(cfg: dict[str, Any]) -> dict[str, Any]:
    host, port, token = cfg["host"], cfg["port"], cfg["token"]
    nonce = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    cycles = 0
    deadline = time.perf_counter() + cfg["seconds"]
    counter = iter(range(1 << 62))

    async def timed(conn: HttpConnection, path: str, body: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        status, answer = await conn.request(post(host, port, path, token, body))
        latencies.append(time.perf_counter() - t0)
        statuses[status] += 1
        if status != 200:
            raise RuntimeError(f"{path}: {status} {answer[:200]!r}")

    async def worker() -> None:
        nonlocal cycles
        conn = await connect(host, port)
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                account_id = account_for(i, cfg["accounts"])
                call_id = f"{nonce}-{i}"
                await timed(
                    conn,
                    "/v1/calls",
                    {"account_id": account_id, "call_id": call_id, "direction": "outbound"},
                )
                await timed(conn, f"/v1/calls/{call_id}/extend", {"account_id": account_id})
                await timed(
                    conn,
                    f"/v1/calls/{call_id}/commit",
                    {"account_id": account_id, "duration_seconds": 420},
                )
                cycles += 1
        finally:
            if conn.transport is not None:
                conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cfg["concurrency"])))
    elapsed = time.perf_counter() - started
    ok = sum(n for s, n in statuses.items() if s == 200)
    return {
        "requests": len(latencies),
        "errors": len(latencies) - ok,
        "cycles": cycles,
        "cycles_per_s": round(cycles / elapsed, 1),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        **percentiles_ms(latencies),
    }


async def run_push(cfg: dict[str, Any]) -> dict[str, Any]:
    """`sockets` live websockets, one per account, all open on the gateway; debits
    at a fixed rate over HTTP; for each debit, the time from its HTTP answer to
    the frame carrying its seq (or a later one: frames are coalesced per account)
    on that account's socket."""
    from websockets.asyncio.client import connect as ws_connect

    host, port, token = cfg["host"], cfg["port"], cfg["token"]
    accounts = [f"bench-{n}" for n in range(cfg["sockets"])]
    frames: dict[str, list[tuple[int, float]]] = {a: [] for a in accounts}
    sockets: list[Any] = []
    readers: list[asyncio.Task[None]] = []

    async def reader(account_id: str, ws: Any) -> None:
        seen = frames[account_id]
        with contextlib.suppress(Exception):
            async for message in ws:
                at = time.perf_counter()
                frame = orjson.loads(message)
                if frame.get("type") == "update":
                    seen.append((int(frame["seq"]), at))

    async def open_socket(account_id: str) -> None:
        ws = await ws_connect(
            f"ws://{host}:{port}/v1/accounts/{account_id}/live?token={token}",
            open_timeout=CONNECT_TIMEOUT_S * 4,
            max_queue=None,
        )
        first = orjson.loads(await ws.recv())
        assert first.get("type") == "snapshot", first
        sockets.append(ws)
        readers.append(asyncio.get_running_loop().create_task(reader(account_id, ws)))

    for start in range(0, len(accounts), SOCKET_OPEN_BATCH):
        await asyncio.gather(*(open_socket(a) for a in accounts[start : start + SOCKET_OPEN_BATCH]))

    pool = ConnectionPool(host, port, cfg["connections"])
    await pool.prewarm(cfg["connections"])
    nonce = uuid.uuid4().hex[:8]
    answered: list[tuple[str, int, float, float]] = []
    failed = 0
    rate = float(cfg["rate_rps"])
    total = max(1, int(rate * cfg["seconds"]))
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        nonlocal failed
        account_id = accounts[i % len(accounts)]
        conn = await pool.acquire()
        sent = time.perf_counter()
        status, body = await conn.request(
            post(
                host,
                port,
                "/v1/messages",
                cfg["switch_token"],
                {"account_id": account_id, "message_id": f"{nonce}-{i}", "direction": "outbound"},
            )
        )
        at = time.perf_counter()
        pool.release(conn)
        if status != 200:
            failed += 1
            return
        answered.append((account_id, int(orjson.loads(body)["seq"]), sent, at))

    begin = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and begin + i / rate <= now:
            task = asyncio.get_running_loop().create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
    if pending:
        await asyncio.wait(pending, timeout=30)
    await asyncio.sleep(PUSH_SETTLE_S)  # the last frames are still on their way
    elapsed = time.perf_counter() - begin
    pool.close()
    for ws in sockets:
        await ws.close()
    for task in readers:
        task.cancel()

    latencies: list[float] = []
    from_send: list[float] = []
    missing = 0
    for account_id, seq, sent, at in answered:
        # The first frame at or past this debit's seq carried it (coalescing may skip seqs).
        arrival = next((t for s, t in frames[account_id] if s >= seq), None)
        if arrival is None:
            missing += 1
            continue
        # A frame may beat the HTTP answer (the script publishes before it returns): 0.
        latencies.append(max(0.0, arrival - at))
        from_send.append(arrival - sent)
    return {
        "requests": len(answered),
        "errors": failed + missing,
        "missing_frames": missing,
        "sockets": len(sockets),
        "offered_rps": rate,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "from_send": percentiles_ms(from_send),
        **percentiles_ms(latencies),
    }


MODES: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "evalsha": run_evalsha,
    "debit-open": run_debit_open,
    "debit-closed": run_debit_closed,
    "calls": run_calls,
    "push": run_push,
}


def main() -> None:
    cfg = orjson.loads(sys.argv[1])
    # The generator is short-lived: no collector pauses in the measuring process.
    gc.disable()
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = uvloop.run(MODES[cfg["mode"]](cfg))
    after = resource.getrusage(resource.RUSAGE_SELF)
    # What the client itself cost (past its imports): it shares the machine with
    # what it measures.
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["client_cpu_us_per_req"] = round(cpu_s * 1e6 / max(1, result["requests"]), 1)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
