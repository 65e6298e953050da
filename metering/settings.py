"""One settings object, read once from `METERING_*` environment variables.

Every limit the service enforces is a named setting here with a default that
works for a local run; nothing else in the code reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "METERING_"


class SettingsError(ValueError):
    """A `METERING_*` variable holds a value that cannot be used."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    # Connections.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Set to 1 to talk to a Redis Cluster (any node's address in redis_url).
    redis_cluster: bool = False
    redis_connections_max: int = 64
    redis_timeout_s: float = 5.0
    database_url: str = "postgresql://postgres@127.0.0.1:5432/metering"
    database_pool_max: int = 10

    # The HTTP edge.
    host: str = "127.0.0.1"
    port: int = 8080
    # uvicorn worker processes for `python -m gateway`.
    workers: int = 1
    switch_token: str = "dev-switch-token"
    ops_token: str = "dev-ops-token"
    request_body_bytes_max: int = 16_384
    log_level: str = "warning"

    # Sharding: fixed for the life of a deployment (changing it moves accounts).
    shard_count: int = 256

    # Calls (credit control).
    call_grant_s: int = 300
    call_validity_grace_s: int = 60
    call_duration_s_max: int = 86_400
    call_extends_max: int = 1_000
    reservation_sweep_interval_s: float = 1.0
    reservation_sweep_batch_max: int = 200

    # Idempotency: how long a request id is remembered with its first answer.
    idempotency_window_s: int = 7 * 86_400
    # Entries per shard stream not yet in Postgres before debits are refused,
    # so a stuck ledger writer cannot grow Redis until it dies.
    ledger_backlog_max: int = 500_000

    # Live push.
    live_channel: str = "m:live"
    # Live websockets (gateway/live_hub.py): each gateway process subscribes once
    # and fans out to at most live_sockets_max sockets of its own.
    live_sockets_max: int = 10_000
    # Distinct accounts waiting to be sent to one socket (coalesced: latest per
    # account wins); an ops socket that falls further behind is closed.
    live_pending_accounts_max: int = 100_000
    # One send to a socket may take this long; a socket stuck longer is closed (4408).
    live_send_timeout_s: float = 5.0
    # Accounts per ops frame (snapshot chunks and update batches).
    live_frame_accounts_max: int = 1_000
    # Accounts an ops snapshot lists at most.
    live_ops_accounts_max: int = 100_000
    # An ops socket gets a fresh snapshot this often (picks up recharge failures).
    live_ops_refresh_s: float = 30.0
    # Pause before resubscribing after the pub/sub connection failed.
    live_reconnect_delay_s: float = 0.5
    # Largest frame a client may send us (clients only listen).
    live_client_frame_bytes_max: int = 4_096
    # Per-message deflate costs CPU on every frame of every socket; off by default.
    live_deflate: bool = False

    # Activity API.
    activity_page_max: int = 500

    # Ledger writer.
    ledger_batch_rows_max: int = 2_000
    ledger_batch_wait_ms: int = 200
    ledger_claim_idle_ms: int = 30_000
    ledger_consumer_group: str = "ledger-writer"

    # Durable ledger: Postgres pool, writer retries, activity export.
    # Seconds to wait for a Postgres connection or statement before giving up.
    database_timeout_s: float = 5.0
    # Writer attempts at one batch while Postgres is down (backoff doubles from
    # 0.1 s up to ledger_retry_backoff_max_s); then the writer exits non-zero.
    ledger_retry_max: int = 60
    ledger_retry_backoff_max_s: float = 2.0
    # How often a writer looks for entries a dead writer left pending.
    ledger_claim_interval_ms: int = 5_000
    # Run one ledger writer task inside each gateway process (demo, small set-ups).
    ledger_writer_in_gateway: bool = False
    # Rows one CSV export may hold (narrow the date range beyond this).
    activity_export_rows_max: int = 100_000

    # Stripe (pay now, card on file, automatic recharge).
    stripe_api_key: str = "sk_test_local"
    stripe_api_base: str = "http://127.0.0.1:8420"
    stripe_webhook_secret: str = "whsec_local"
    stripe_timeout_s: float = 10.0
    # Payments: SDK retries of one Stripe call (same idempotency key),
    # webhook timestamp tolerance, and the bounds of one pay-now payment.
    stripe_max_network_retries: int = 2
    stripe_webhook_tolerance_s: int = 300
    stripe_webhook_bytes_max: int = 262_144
    stripe_currency: str = "usd"
    payment_micros_min: int = 1_000_000
    payment_micros_max: int = 10_000_000_000
    # Recharge worker: poll period, requests per read, retry rule. Network and
    # 5xx failures retry with exponential backoff (base, cap, count); a declined
    # card or a missing card waits recharge_decline_retry_s; an episode gives up
    # after recharge_attempts_max attempts (a new card restarts it).
    recharge_poll_interval_s: float = 0.5
    recharge_batch_max: int = 50
    recharge_backoff_base_s: float = 2.0
    recharge_backoff_max_s: float = 300.0
    recharge_transient_retries_max: int = 5
    recharge_decline_retry_s: float = 21_600.0
    recharge_attempts_max: int = 10
    recharge_lease_s: float = 120.0
    recharge_consumer_group: str = "recharge-worker"
    # One automatic recharge charges at most this much (like payment_micros_max
    # for pay now); a saved amount above it is refused, an older one is not charged.
    recharge_micros_max: int = 10_000_000_000
    # Recharge intake: requests another worker left unacknowledged this long are
    # taken over, checked for every recharge_claim_interval_ms.
    recharge_claim_idle_ms: int = 30_000
    recharge_claim_interval_ms: int = 5_000
    # The worker's repair pass (every recharge_repair_interval_s): a pending mark
    # without an open episode, a charge not yet credited and card or recharge
    # settings not yet copied to Redis are put right once they are older than
    # recharge_repair_grace_s; each pass looks at recharge_repair_accounts_max
    # accounts' marks, so every account is looked at within
    # (accounts / recharge_repair_accounts_max) passes.
    recharge_repair_interval_s: float = 2.0
    recharge_repair_grace_s: float = 60.0
    recharge_repair_accounts_max: int = 5_000

    # Email for recharge failures.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_sender: str = "billing@metering.local"
    smtp_timeout_s: float = 10.0

    # Tests of crash windows only: a process that reaches the named point
    # (metering/crash_points.py) kills itself with SIGKILL there. Empty: never.
    crash_point: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `METERING_<FIELD>` variables, falling back to defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, type(field.default))
        settings = cls(**values)
        settings.check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (used by tests and tools)."""
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that would break an invariant rather than fail later."""
        if not 1 <= self.shard_count <= 16_384:
            raise SettingsError("METERING_SHARD_COUNT must be between 1 and 16384")
        for name in (
            "call_grant_s",
            "call_duration_s_max",
            "redis_connections_max",
            "request_body_bytes_max",
            "idempotency_window_s",
            "ledger_backlog_max",
            "ledger_batch_rows_max",
            "activity_page_max",
            "workers",
            "call_extends_max",
            "reservation_sweep_batch_max",
            "payment_micros_min",
            "recharge_batch_max",
            "recharge_attempts_max",
            "recharge_micros_max",
            "recharge_repair_accounts_max",
            "ledger_retry_max",
            "activity_export_rows_max",
            "database_pool_max",
            "live_sockets_max",
            "live_pending_accounts_max",
            "live_frame_accounts_max",
            "live_ops_accounts_max",
            "live_client_frame_bytes_max",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"METERING_{name.upper()} must be at least 1")
        if self.live_send_timeout_s <= 0 or self.live_ops_refresh_s <= 0:
            raise SettingsError(
                "METERING_LIVE_SEND_TIMEOUT_S and METERING_LIVE_OPS_REFRESH_S must be positive"
            )
        if self.call_validity_grace_s < 0:
            raise SettingsError("METERING_CALL_VALIDITY_GRACE_S must not be negative")
        if self.call_grant_s > self.call_duration_s_max:
            raise SettingsError(
                "METERING_CALL_GRANT_S must not exceed METERING_CALL_DURATION_S_MAX"
            )
        if self.payment_micros_min > self.payment_micros_max:
            raise SettingsError(
                "METERING_PAYMENT_MICROS_MIN must not exceed METERING_PAYMENT_MICROS_MAX"
            )
        if not 0 <= self.stripe_max_network_retries <= 5:
            raise SettingsError("METERING_STRIPE_MAX_NETWORK_RETRIES must be between 0 and 5")
        if not self.switch_token or not self.ops_token:
            raise SettingsError("METERING_SWITCH_TOKEN and METERING_OPS_TOKEN must not be empty")


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def documented_settings() -> list[tuple[str, str]]:
    """Every variable with its default, for the README and `--help`."""
    return [(ENV_PREFIX + f.name.upper(), repr(f.default)) for f in dataclasses.fields(Settings)]
