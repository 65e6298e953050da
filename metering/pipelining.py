"""Automatic pipelining of script calls.

Every EVALSHA the tasks of one process start within one event-loop tick is
written to Redis in one write, on one connection per Redis node, and the
replies, which come back in the order the calls were written, are handed to
their callers one by one: each caller gets its own answer or its own error.

    call ─┐                     one write per tick (at most
    call ─┼─> RespConnection ──> redis_pipeline_batch_max calls)
    call ─┘        │
                   └── replies in order -> each caller's future

Bounds:
- a write carries at most `redis_pipeline_batch_max` calls;
- at most `redis_pipeline_pending_max` calls wait for an answer on one
  connection; one more fails at once with `Unavailable` (503) instead of
  queueing behind a slow Redis;
- each call has its own deadline (`redis_timeout_s`). A call past it fails with
  a TimeoutError, alone: its late reply is read and dropped, so the replies
  stay matched to their callers. A connection that answered nothing for a whole
  timeout while calls waited is closed; the calls still on it fail with a
  ConnectionError, the next call opens a new connection.

A NOSCRIPT reply (a restarted or failed-over Redis) loads the script on that
connection and repeats the call; on a cluster, a MOVED or ASK reply (a slot
moved), and any cluster reply that redis-py knows how to retry, sends that call
through redis-py's cluster client, which follows the redirect and refreshes its
slot table. Nothing else is retried: a call whose connection broke after it was
written fails, as it did through redis-py (whose retries are off here), and the
switch's retry with the same id is answered from the idempotency key.

Why not redis-py for this: measured on this machine (bench/README.md), one
EVALSHA costs the calling process about 65 µs of CPU through redis-py one call
at a time, 27 µs through a redis-py pipeline per tick, and 9 µs here (hiredis
parses, a future per call, no pool, no per-call timer). Everything else (reads,
pub/sub, the ledger writer's stream commands) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import hiredis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser  # redis-py's table: error reply -> exception class
from redis.connection import parse_url

from metering.errors import Unavailable
from metering.metrics import METRICS

if TYPE_CHECKING:
    from metering.restart_fence import RestartFence
    from metering.scripts import LuaScript
    from metering.settings import Settings


class ErrorReply(Exception):
    """An error reply as hiredis hands it over; `redis_error` turns it into the
    exception redis-py would have raised for it."""


def redis_error(reply: ErrorReply) -> redis_errors.RedisError:
    error: redis_errors.RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


# Replies after which redis-py's cluster client is the one to ask (it follows
# redirects and refreshes its slot table); the script did not run on this node.
CLUSTER_RETRY_ERRORS = (
    redis_errors.AskError,  # MovedError is a subclass
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)


def pack_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One command in RESP: an array of bulk strings (ints as decimal text, as
    redis-py sends them)."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is bytes:
            data = arg
        elif kind is int or kind is float:
            data = repr(arg).encode()
        else:
            raise redis_errors.DataError(
                f"invalid script argument {arg!r} of type {kind.__name__}: "
                "use str, bytes, int or float"
            )
        append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def tls_context(redis_url: str, options: dict[str, Any]) -> ssl.SSLContext | None:
    """TLS for a rediss:// URL (certificates checked unless ssl_cert_reqs=none)."""
    if urllib.parse.urlsplit(redis_url).scheme != "rediss":
        return None
    context = ssl.create_default_context()
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# Records `count` script round trips of `duration_s` under the key (script name,).
ObserveMany = Callable[[tuple[str, ...], float, int], None]


class RespConnection(asyncio.Protocol):
    """One connection to one Redis node: calls written in order, one write per
    loop tick, replies matched to calls in order.

    With `observe` given, each labelled call's round trip (from the write that
    carried it to its reply) is recorded. It costs no clock reading per call:
    the calls of one write share the write's time, which `_write` reads once,
    and the replies that one read delivers share one reading; a run of replies
    with the same label and write is recorded as one observation of `count`."""

    def __init__(
        self,
        name: str,
        timeout_s: float,
        batch_max: int,
        pending_max: int,
        observe: ObserveMany | None = None,
    ) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._batch_max = batch_max
        self._pending_max = pending_max
        self._reader = hiredis.Reader(replyError=ErrorReply, encoding="utf-8")
        # (future, deadline, label, written_at) of every call written or about to
        # be, oldest first; written_at is a cell shared by the calls of one write,
        # holding that write's loop time once it is made.
        self._waiting: collections.deque[
            tuple[asyncio.Future[Any], float, tuple[str, ...] | None, list[float]]
        ] = collections.deque()
        self._observe = observe
        self._written_at = [0.0]
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._last_reply_at = self._loop.time()
        self.closed = False
        # Counters for tests and logs: writes made, calls failed by their deadline.
        self.writes = 0
        self.timeouts = 0

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._last_reply_at = self._loop.time()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._abort(redis_errors.ConnectionError(f"redis {self.name}: {exc}"))
            return
        if reply is False:
            return
        now = self._last_reply_at = self._loop.time()
        # The current run of replies with one label and one write (see the class).
        run_label: tuple[str, ...] | None = None
        run_written_at = self._written_at
        run_count = 0
        while reply is not False:
            if not waiting:
                self._abort(redis_errors.ConnectionError(f"redis {self.name}: unexpected reply"))
                break
            future, _, label, written_at = waiting.popleft()
            # A call already done timed out (recorded then) or its caller gave up:
            # its reply is dropped.
            if not future.done():
                future.set_result(reply)
                if label is not None:
                    if label is run_label and written_at is run_written_at:
                        run_count += 1
                    else:
                        if run_count:
                            self._observe(run_label, now - run_written_at[0], run_count)  # type: ignore[misc, arg-type]
                        run_label, run_written_at, run_count = label, written_at, 1
            reply = reader.gets()
        if run_count:
            self._observe(run_label, now - run_written_at[0], run_count)  # type: ignore[misc, arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(
            redis_errors.ConnectionError(
                f"redis {self.name}: connection lost" + (f" ({exc})" if exc else "")
            )
        )

    # ---- calls ----

    def call(
        self, packed: bytes, admitted: bool = False, label: tuple[str, ...] | None = None
    ) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (an ErrorReply
        for an error reply) or a TimeoutError / ConnectionError. `admitted`: the
        repeat of a call the bound already let in (after NOSCRIPT), which must not
        be refused half-way (at most two more entries per admitted call).
        `label`: the key its round trip is recorded under (with `observe`)."""
        if self.closed:
            raise redis_errors.ConnectionError(f"redis {self.name}: connection closed")
        waiting = self._waiting
        if not admitted and len(waiting) >= self._pending_max:
            raise Unavailable(
                f"{self._pending_max} calls are already waiting for the balance store; retry"
            )
        loop = self._loop
        future = loop.create_future()
        if self._observe is None:
            label = None
        waiting.append((future, loop.time() + self._timeout_s, label, self._written_at))
        out = self._out
        out.append(packed)
        if len(out) >= self._batch_max:
            self._write()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_at(waiting[0][1], self._expire)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            self._write()

    def _write(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        if self._observe is not None:
            self._written_at[0] = self._loop.time()
            self._written_at = [0.0]
        if self._transport is not None and not self.closed:
            self._transport.write(data)
            self.writes += 1

    def _expire(self) -> None:
        """Fail the calls past their deadline; close a connection that answered
        nothing for a whole timeout while calls waited."""
        self._timer = None
        now = self._loop.time()
        expired = 0
        next_deadline = None
        for future, deadline, label, written_at in self._waiting:
            if deadline > now:
                next_deadline = deadline
                break
            if not future.done():
                future.set_exception(
                    redis_errors.TimeoutError(
                        f"redis {self.name}: no answer within {self._timeout_s}s"
                    )
                )
                expired += 1
                if label is not None:  # a call that timed out took this long
                    self._observe(label, now - (written_at[0] or now), 1)  # type: ignore[misc]
        self.timeouts += expired
        if expired and now - self._last_reply_at >= self._timeout_s:
            self._abort(
                redis_errors.ConnectionError(
                    f"redis {self.name}: nothing answered for {self._timeout_s}s"
                )
            )
            return
        if next_deadline is not None:
            self._timer = self._loop.call_at(next_deadline, self._expire)

    def _fail_all(self, error: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        waiting, self._waiting = self._waiting, collections.deque()
        for future, *_ in waiting:
            if not future.done():
                future.set_exception(error)

    def _abort(self, error: Exception) -> None:
        self._fail_all(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._abort(redis_errors.ConnectionError(f"redis {self.name}: closed by the client"))

    async def command(self, *args: Any) -> Any:
        """One command, its reply or its error raised (for the handshake and tools)."""
        reply = await self.call(pack_command(args))
        if isinstance(reply, ErrorReply):
            raise redis_error(reply)
        return reply


class ScriptPipeline:
    """The script calls of one process, pipelined per Redis node (see the module
    docstring). `client` is the process's redis-py client to the same server(s):
    the cluster's slot table is read from it, and redirected calls go through it."""

    def __init__(self, client: Any, settings: Settings, fence: RestartFence | None = None) -> None:
        self.client = client
        self._fence = fence
        self._cluster = settings.redis_cluster
        self._timeout_s = settings.redis_timeout_s
        self._batch_max = settings.redis_pipeline_batch_max
        self._pending_max = settings.redis_pipeline_pending_max
        # Each script call's round trip (metering_redis_script_duration_seconds).
        self._observe = METRICS.script_calls.observe_many if settings.request_metrics else None
        options = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._db = 0 if self._cluster else int(options.get("db") or 0)
        self._unix_path: str | None = options.get("path")
        self._tls = tls_context(settings.redis_url, options)
        self._default = (options.get("host") or "127.0.0.1", int(options.get("port") or 6379))
        self._connections: dict[tuple[str, int], RespConnection] = {}
        self.redirected = 0  # calls a cluster node redirected (sent through redis-py)
        self._connecting: dict[tuple[str, int], asyncio.Future[RespConnection]] = {}

    @staticmethod
    def supports(redis_url: str) -> bool:
        """URL schemes this client speaks (anything else stays on redis-py)."""
        return urllib.parse.urlsplit(redis_url).scheme in ("redis", "rediss", "unix")

    def _address(self, keys: list[str]) -> tuple[str, int]:
        if not self._cluster:
            return self._default
        node = self.client.get_node_from_key(keys[0])
        return (node.host, int(node.port))

    async def run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of `script`, written with the other calls of this tick."""
        if self._cluster and not keys:
            return await script.call_one(self.client, keys, args)
        address = self._address(keys)
        connection = self._connections.get(address)
        if connection is None or connection.closed:
            connection = await self._connect(address)
        packed = pack_command((b"EVALSHA", script.sha, len(keys), *keys, *args))
        reply = await connection.call(packed, label=script.label)
        if type(reply) is ErrorReply:
            return await self._after_error(redis_error(reply), connection, script, keys, args)
        return reply

    async def run_many(
        self, script: LuaScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Every call written at once, in order (one write per node, in batches of
        `redis_pipeline_batch_max`), without a task per call; the answers in
        order, each an answer or the exception of that call alone."""
        if self._cluster and any(not keys for keys, _ in calls):
            return await asyncio.gather(
                *(script.call_one(self.client, k, a) for k, a in calls), return_exceptions=True
            )
        sent: list[tuple[RespConnection, asyncio.Future[Any]] | BaseException] = []
        for keys, args in calls:
            try:
                address = self._address(keys)
                connection = self._connections.get(address)
                if connection is None or connection.closed:
                    connection = await self._connect(address)
                packed = pack_command((b"EVALSHA", script.sha, len(keys), *keys, *args))
                sent.append((connection, connection.call(packed, label=script.label)))
            except Exception as exc:  # this call's own failure (e.g. the queue bound)
                sent.append(exc)
        answers: list[Any] = []
        for (keys, args), pending in zip(calls, sent, strict=True):
            if isinstance(pending, BaseException):
                answers.append(pending)
                continue
            connection, future = pending
            try:
                reply = await future
                if type(reply) is ErrorReply:
                    reply = await self._after_error(
                        redis_error(reply), connection, script, keys, args
                    )
                answers.append(reply)
            except Exception as exc:
                answers.append(exc)
        return answers

    async def _after_error(
        self,
        error: redis_errors.RedisError,
        connection: RespConnection,
        script: LuaScript,
        keys: list[str],
        args: list[Any],
    ) -> Any:
        if self._cluster and isinstance(error, CLUSTER_RETRY_ERRORS):
            self.redirected += 1
            return await script.call_one(self.client, keys, args)
        if not isinstance(error, redis_errors.NoScriptError):
            raise error
        # The script did not run. Load it and repeat the call on the same
        # connection: replies come in order, so both go in one write.
        loaded = connection.call(pack_command((b"SCRIPT", b"LOAD", script.source)), admitted=True)
        again = connection.call(
            pack_command((b"EVALSHA", script.sha, len(keys), *keys, *args)),
            admitted=True,
            label=script.label,
        )
        sha = await loaded
        if isinstance(sha, ErrorReply):
            again.cancel()
            raise redis_error(sha)
        reply = await again
        if isinstance(reply, ErrorReply):
            raise redis_error(reply)
        return reply

    async def _connect(self, address: tuple[str, int]) -> RespConnection:
        """The node's connection, opened once however many callers wait for it
        (in a task of its own, so a caller that gives up does not stop it)."""
        opening = self._connecting.get(address)
        if opening is None:
            opening = asyncio.ensure_future(self._open(address))
            self._connecting[address] = opening
            opening.add_done_callback(lambda task: self._opened(address, task))
        return await asyncio.shield(opening)

    def _opened(self, address: tuple[str, int], task: asyncio.Future[RespConnection]) -> None:
        del self._connecting[address]
        if not task.cancelled() and task.exception() is None:
            self._connections[address] = task.result()

    async def _open(self, address: tuple[str, int]) -> RespConnection:
        loop = asyncio.get_running_loop()
        host, port = address
        name = self._unix_path or f"{host}:{port}"
        connection = RespConnection(
            name, self._timeout_s, self._batch_max, self._pending_max, self._observe
        )
        try:
            if self._unix_path and not self._cluster:
                await asyncio.wait_for(
                    loop.create_unix_connection(lambda: connection, self._unix_path),
                    self._timeout_s,
                )
            else:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: connection,
                        host,
                        port,
                        ssl=self._tls,
                        server_hostname=host if self._tls else None,
                    ),
                    self._timeout_s,
                )
        except (OSError, TimeoutError) as exc:
            raise redis_errors.ConnectionError(f"redis {name}: cannot connect ({exc})") from exc
        try:
            if self._password:
                if self._username:
                    await connection.command(b"AUTH", self._username, self._password)
                else:
                    await connection.command(b"AUTH", self._password)
            if self._db:
                await connection.command(b"SELECT", self._db)
            if self._fence is not None:
                await self._fence.admit(connection.command)
        except BaseException:
            connection.close()
            raise
        return connection

    def connections(self) -> dict[tuple[str, int], RespConnection]:
        """The open connections by node address."""
        return {a: c for a, c in self._connections.items() if not c.closed}

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


class ChannelReader(asyncio.Protocol):
    """One pub/sub connection read with hiredis: each message published on the
    channel is handed to `on_message` as soon as it is parsed, many per wake-up,
    with no task, future or timeout per message (redis-py's `get_message` costs
    all three on every message, and the live hub reads one per debit)."""

    def __init__(self, name: str, on_message: Callable[[bytes], None]) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._reader = hiredis.Reader(replyError=ErrorReply)
        self._transport: asyncio.Transport | None = None
        self._handshake: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost = asyncio.Event()
        self.error: Exception | None = None
        self.last_data_at = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data_at = self._loop.time()
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                if self._handshake:
                    future = self._handshake.popleft()
                    if not future.done():
                        future.set_result(reply)
                elif type(reply) is list and reply[0] == b"message":
                    self._on_message(reply[2])
                elif isinstance(reply, ErrorReply):
                    raise redis_error(reply)
                reply = reader.gets()
        except Exception as exc:  # a broken stream: closed, and the owner resubscribes
            self.error = exc
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self._handshake:
            if not future.done():
                future.set_exception(
                    redis_errors.ConnectionError(f"redis {self.name}: connection lost")
                )
        self.lost.set()

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """A command whose reply comes before the subscription's messages
        (the handshake); its future gets the reply."""
        assert self._transport is not None
        future = self._loop.create_future()
        self._handshake.append(future)
        self._transport.write(pack_command(args))
        return future

    def ping(self) -> None:
        """In subscribed mode Redis answers ["pong", ""]: any data is a sign of life."""
        if self._transport is not None:
            self._transport.write(pack_command((b"PING",)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.lost.set()


async def subscribe(
    redis_url: str,
    channel: str,
    on_message: Callable[[bytes], None],
    timeout_s: float,
    client_name: str,
) -> ChannelReader:
    """A ChannelReader on `channel` of the server at `redis_url` (any node of a
    cluster: a PUBLISH reaches every node), subscribed when this returns."""
    options = parse_url(redis_url)  # type: ignore[no-untyped-call]
    loop = asyncio.get_running_loop()
    host, port = options.get("host") or "127.0.0.1", int(options.get("port") or 6379)
    path: str | None = options.get("path")
    name = path or f"{host}:{port}"
    subscriber = ChannelReader(name, on_message)
    tls = tls_context(redis_url, options)
    try:
        if path:
            opening = loop.create_unix_connection(lambda: subscriber, path)
        else:
            opening = loop.create_connection(
                lambda: subscriber, host, port, ssl=tls, server_hostname=host if tls else None
            )
        transport, _ = await asyncio.wait_for(opening, timeout_s)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        replies = []
        if options.get("password"):
            auth = [options["username"]] if options.get("username") else []
            replies.append(subscriber.send(b"AUTH", *auth, options["password"]))
        replies.append(subscriber.send(b"CLIENT", b"SETNAME", client_name))
        replies.append(subscriber.send(b"SUBSCRIBE", channel))
        for reply in await asyncio.wait_for(asyncio.gather(*replies), timeout_s):
            if isinstance(reply, ErrorReply):
                raise redis_error(reply)
    except (OSError, TimeoutError) as exc:
        subscriber.close()
        raise redis_errors.ConnectionError(f"redis {name}: cannot subscribe ({exc})") from exc
    except BaseException:
        subscriber.close()
        raise
    return subscriber
