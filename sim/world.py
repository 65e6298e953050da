"""The real system the simulation drives, each part a process it started itself
and stops itself (only those):

- redis-server with the append-only file, in a folder of its own (so it can be
  killed, its file cut back to simulate the fsync window, and restarted);
- a Postgres schema of its own in the test database, reached through TCP
  proxies it controls: one for the gateways, one for the ledger writer, one for
  the recharge worker (each can be cut or held on its own);
- two gateways (`python -m gateway`), each sweeping expired reservations;
- the ledger writer and the recharge worker (`python -m metering ...`), the
  worker behind its own proxies to Redis and to Stripe so it can be stopped at
  any point between charging a card and crediting the balance;
- the local Stripe (tests/stripe_local.py) with both gateways registered as
  webhook endpoints (every event is delivered twice), and an SMTP sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from devkit.processes import die_with_parent
from devkit.testing import (
    ROOT,
    GatewayProcess,
    RedisServer,
    SmtpSink,
    StripeServer,
    TcpProxy,
    free_port,
    settings_env,
    stop_process,
    url_port,
    url_with_port,
)
from metering.ledger.migrate import apply_migrations, ensure_database
from metering.settings import Settings
from metering.store import Store, open_store

WEBHOOK_SECRET = "whsec_simulation"
STRIPE_KEY = "sk_test_simulation"
SWITCH_TOKEN = "sim-switch-token"
OPS_TOKEN = "sim-ops-token"
GATEWAYS = 2
GATEWAY_START_TRIES = 10


def sim_settings(redis_url: str, database_url: str, **changes: Any) -> Settings:
    """The gateway settings of a simulation: every time window made short, so a run
    covers days of product time (grants, validity, idempotency, backoff) in seconds."""
    base = Settings.from_env({}).replace(
        redis_url=redis_url,
        database_url=database_url,
        switch_token=SWITCH_TOKEN,
        ops_token=OPS_TOKEN,
        redis_timeout_s=2.0,
        database_timeout_s=2.0,
        shard_count=16,
        call_grant_s=3,
        call_validity_grace_s=1,
        call_duration_s_max=60,
        call_extends_max=6,
        reservation_sweep_interval_s=0.25,
        idempotency_window_s=4,
        call_late_commit_window_s=3,
        ledger_backlog_max=150,
        ledger_batch_wait_ms=50,
        ledger_claim_interval_ms=300,
        ledger_claim_idle_ms=1_000,
        ledger_retry_max=100_000,
        ledger_retry_backoff_max_s=0.5,
        live_channel=f"m:live:sim:{uuid.uuid4().hex[:8]}",
        stripe_api_key=STRIPE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_timeout_s=3.0,
        stripe_max_network_retries=1,
        recharge_poll_interval_s=0.05,
        recharge_backoff_base_s=0.1,
        recharge_backoff_max_s=0.4,
        recharge_transient_retries_max=3,
        recharge_decline_retry_s=0.8,
        recharge_attempts_max=3,
        recharge_lease_s=1.5,
        recharge_repair_interval_s=0.5,
        recharge_repair_grace_s=2.0,
        stream_claim_idle_ms=1_000,
        smtp_timeout_s=2.0,
        http_body_read_timeout_s=2.0,
        # Every request comes from 127.0.0.1: the fuzzer's forged tokens must not
        # block the accounts' own customer tokens (limits per token prefix stay).
        auth_failures_per_client_max=1_000_000,
    )
    return base.replace(**changes) if changes else base


@dataclasses.dataclass
class Worker:
    """A `python -m metering <command>` process we supervise."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Set when we killed it ourselves; any other exit is a finding.
    killed_by_us: bool = False

    def start(self, crash_point: str = "") -> None:
        """Start it; with crash_point, it kills itself when it reaches that point."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = dict(self.env, METERING_CRASH_POINT=crash_point)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metering", "--log-level", "info", *self.argv],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        log.close()
        self.starts += 1
        # A process told to die at a crash point is expected to end on its own.
        self.killed_by_us = bool(crash_point)

    def kill(self) -> None:
        """SIGKILL: nothing is flushed or acknowledged."""
        if self.proc is not None and self.proc.poll() is None:
            self.killed_by_us = True
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def exited_on_its_own(self) -> int | None:
        """The exit code if it ended without us killing or stopping it."""
        if self.proc is None or self.killed_by_us:
            return None
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc is not None:
            self.killed_by_us = True
            stop_process(self.proc)


class World:
    """Every process of one simulation run; `close()` stops exactly these."""

    def __init__(self, run_dir: Path, database_url: str, **setting_changes: Any) -> None:
        self.run_dir = run_dir
        self.database_url_base = database_url
        self.schema = f"sim_{uuid.uuid4().hex[:10]}"
        self.setting_changes = setting_changes
        self._closers: list[Any] = []
        self.redis: RedisServer | None = None
        self.gateways: list[GatewayProcess | None] = []
        self.gateway_ports: list[int] = []
        self.proxies: dict[str, TcpProxy] = {}
        self.workers: dict[str, Worker] = {}
        self.store: Store | None = None
        self.db: Any = None
        self.stripe: StripeServer | None = None
        self.smtp: SmtpSink | None = None
        self.settings: Settings | None = None

    # ---- start and stop ----

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await self._start_postgres()
        (self.run_dir / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--auto-aof-rewrite-percentage",
            "0",
            data_dir=self.run_dir / "redis",
        )
        self._closers.append(self.redis.stop)
        self.stripe = StripeServer(log_path=self.run_dir / "stripe.log")
        self._closers.append(self.stripe.stop)
        self.smtp = SmtpSink()
        self._closers.append(self.smtp.stop)
        pg_port = url_port(self.database_url_base)
        for name in ("gateway_pg", "writer_pg", "worker_pg"):
            self.proxies[name] = TcpProxy("127.0.0.1", pg_port)
        self.proxies["worker_redis"] = TcpProxy("127.0.0.1", self.redis.port)
        self.proxies["worker_stripe"] = TcpProxy("127.0.0.1", self.stripe.port)
        for proxy in self.proxies.values():
            proxy.start()
            self._closers.append(proxy.close)
        self.settings = sim_settings(
            self.redis.url,
            self.database_url,
            smtp_port=self.smtp.port,
            stripe_api_base=self.stripe.url,
            **self.setting_changes,
        )
        self.store = await open_store(self.settings)
        self.db = await asyncpg.create_pool(self.database_url, min_size=1, max_size=4)
        self.gateway_ports = [free_port() for _ in range(GATEWAYS)]
        self.gateways = [None] * GATEWAYS
        for i in range(GATEWAYS):
            self.start_gateway(i)
        self.workers["writer"] = Worker(
            "ledger writer",
            ["ledger-writer"],
            self.env(database_url=self._via("writer_pg")),
            self.run_dir / "writer.log",
        )
        self.workers["recharge"] = Worker(
            "recharge worker",
            ["recharge-worker", "--consumer", "sim-recharge"],
            self.env(
                database_url=self._via("worker_pg"),
                redis_url=f"redis://127.0.0.1:{self.proxies['worker_redis'].port}/0",
                stripe_api_base=f"http://127.0.0.1:{self.proxies['worker_stripe'].port}",
            ),
            self.run_dir / "recharge.log",
        )
        for w in self.workers.values():
            w.start()

    @property
    def database_url(self) -> str:
        sep = "&" if "?" in self.database_url_base else "?"
        return f"{self.database_url_base}{sep}search_path={self.schema}"

    def _via(self, proxy: str) -> str:
        return url_with_port(self.database_url, self.proxies[proxy].port)

    def env(self, **changes: Any) -> dict[str, str]:
        assert self.settings is not None
        return settings_env(self.settings.replace(**changes))

    async def _start_postgres(self) -> None:
        await ensure_database(self.database_url_base)
        admin = await asyncpg.connect(self.database_url_base)
        try:
            await admin.execute(f'CREATE SCHEMA "{self.schema}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.database_url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    async def _drop_schema(self) -> None:
        admin = await asyncpg.connect(self.database_url_base)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await admin.close()

    async def close(self, keep_logs: bool = False) -> None:
        for w in self.workers.values():
            w.stop()
        for g in self.gateways:
            if g is not None:
                g.stop()
        if self.store is not None:
            await self.store.redis.aclose()
        if self.db is not None:
            await self.db.close()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(Exception):
            await self._drop_schema()
        if not keep_logs:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ---- gateways ----

    def start_gateway(self, i: int, crash_point: str = "") -> None:
        assert self.settings is not None and self.stripe is not None
        settings = self.settings.replace(
            database_url=self._via("gateway_pg"), crash_point=crash_point
        )
        # A gateway refuses to start while Redis is down (a Redis fault may be in
        # force); like a supervisor, start it again until it stays up.
        for attempt in range(GATEWAY_START_TRIES):
            try:
                gw = GatewayProcess(
                    settings,
                    log_path=self.run_dir / f"gateway{i}.log",
                    port=self.gateway_ports[i],
                )
                break
            except RuntimeError:
                if attempt == GATEWAY_START_TRIES - 1:
                    raise
                time.sleep(1.0)
        self.gateways[i] = gw
        self.stripe.register_webhook(f"gw{i}", gw.url + "/v1/stripe/webhook", WEBHOOK_SECRET)

    def kill_gateway(self, i: int) -> None:
        gw = self.gateways[i]
        if gw is not None:
            gw.proc.kill()
            gw.proc.wait()
            self.gateways[i] = None

    def gateway_urls(self) -> list[str]:
        return [g.url for g in self.gateways if g is not None]

    def all_gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.gateway_ports]

    # ---- redis ----

    def aof_size(self) -> int:
        assert self.redis is not None
        path = self.redis.append_only_file()
        return path.stat().st_size if path.exists() else 0

    async def redis_crash(self, truncate_to: int | None = None, down_s: float = 0.0) -> None:
        """SIGKILL redis-server; with truncate_to, cut the append-only file back to that
        size first (what an OS crash loses with appendfsync everysec); start it again."""
        assert self.redis is not None
        self.redis.proc.kill()
        self.redis.proc.wait()
        if truncate_to is not None:
            os.truncate(self.redis.append_only_file(), truncate_to)
        if down_s:
            await asyncio.sleep(down_s)
        self.redis.proc = await asyncio.to_thread(self.redis._start)  # noqa: SLF001
        if self.store is not None:
            # Our own pooled connections died with the server.
            await self.store.redis.connection_pool.disconnect()

    async def set_fsync(self, policy: str) -> None:
        assert self.store is not None
        await self.store.redis.config_set("appendfsync", policy)

    # ---- workers and proxies ----

    def check_workers(self) -> list[str]:
        """Workers that exited on their own (a finding), restarted so the run goes on."""
        out = []
        for w in self.workers.values():
            code = w.exited_on_its_own()
            if code is not None:
                out.append(f"{w.name} exited with code {code} (log {w.log_path})")
                w.start()
        return out

    def restart_worker(self, name: str) -> None:
        w = self.workers[name]
        if w.proc is None or w.proc.poll() is not None:
            w.start()

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m metering <args>` to completion, as an operator would run it."""
        proc = subprocess.run(
            [sys.executable, "-m", "metering", "--log-level", "warning", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        with open(self.run_dir / "cli.log", "a") as log:
            log.write(
                f"$ metering {' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        if proc.returncode != 0:
            raise RuntimeError(f"metering {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def logs_tail(self, lines: int = 20) -> str:
        out = []
        for path in sorted(self.run_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def new_run_dir(seed: int) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"metering-sim-{seed}-"))


async def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval_s)
    return False


async def poll_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02
) -> bool:
    """Wait (bounded) for a condition another thread or process makes true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return False
