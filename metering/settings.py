"""One settings object, read once from `METERING_*` environment variables.

Every limit the service enforces is a named setting here with a default that
works for a local run; nothing else in the code reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
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
    # Automatic pipelining (metering/pipelining.py): the script calls of one
    # event-loop tick go to Redis in one write, at most redis_pipeline_batch_max
    # calls a write; at most redis_pipeline_pending_max calls wait for answers on
    # one connection (one more is refused with 503 at once). 0 sends each script
    # call through redis-py on its own.
    redis_pipeline: bool = True
    redis_pipeline_batch_max: int = 256
    redis_pipeline_pending_max: int = 4_096
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
    # Items of one POST /v1/debit-batches (texts and ring-through attempts).
    debit_batch_items_max: int = 100
    log_level: str = "warning"
    # Strict-Transport-Security max-age on answers served over TLS (https, or
    # X-Forwarded-Proto https from a trusted proxy); 0 sends none.
    http_hsts_max_age_s: int = 31_536_000
    # Slow clients (gateway/connection_guard.py): a request's headers must arrive
    # within http_header_read_timeout_s of its first byte (of the opening, on a new
    # connection), its body within http_body_read_timeout_s of the headers;
    # else 408 and the connection closes.
    http_header_read_timeout_s: float = 10.0
    http_body_read_timeout_s: float = 10.0
    # Open connections (websockets included) one client address may hold in one
    # process; 0 = no cap (behind a proxy that caps per address itself).
    http_connections_per_client_max: int = 1_000
    # An idle keep-alive connection is closed after this long. Clients must let
    # idle connections go sooner (or retry with the same id, which is safe).
    http_keep_alive_s: float = 30.0
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips: comma-separated addresses or networks, or *).
    http_forwarded_allow_ips: str = "127.0.0.1,::1"
    # Failed authentication (gateway/auth_limits.py, per process): more failures
    # than these within auth_failure_window_s, from one client address or with
    # tokens sharing their first 8 characters, refuse that address or prefix
    # (429, Retry-After) for auth_failure_block_s. Never the switch or ops token.
    auth_failures_per_client_max: int = 20
    auth_failures_per_token_prefix_max: int = 20
    auth_failure_window_s: float = 60.0
    auth_failure_block_s: float = 300.0
    # Addresses and prefixes remembered at most (each table; the oldest go first).
    auth_failure_tracked_max: int = 100_000

    # Sharding: fixed for the life of a deployment (changing it moves accounts).
    shard_count: int = 256

    # Calls (credit control).
    call_grant_s: int = 300
    call_validity_grace_s: int = 60
    call_duration_s_max: int = 86_400
    call_extends_max: int = 1_000
    # How long after the sweeper expired a call its commit or release still
    # corrects the charge to the real duration (once, with a ledger entry). At
    # most the idempotency window, which keeps the call's record.
    call_late_commit_window_s: int = 86_400
    reservation_sweep_interval_s: float = 1.0
    reservation_sweep_batch_max: int = 200

    # Workers (ledger writer, sweeper, recharge worker) ride out a Redis or
    # Postgres restart: retries back off from 0.1 s, doubling, up to this pause.
    outage_backoff_max_s: float = 5.0

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
    # Of live_sockets_max, kept for ops: customer sockets stop this many short.
    live_ops_sockets_reserved: int = 100
    # Sockets one customer token, and one account over all its tokens, may hold
    # in one process (a dashboard is one socket per open tab).
    live_sockets_per_token_max: int = 10
    live_sockets_per_account_max: int = 50
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
    # Days one usage summary (GET .../usage) may span.
    usage_days_max: int = 366

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
    # Stripe.js for the dashboard's card entry: Stripe's own
    # https://js.stripe.com/v3/ with a publishable key (pk_live_/pk_test_) in
    # production; the local Stripe's copy in development and tests. The pages'
    # Content-Security-Policy allows this script's origin and no other.
    stripe_js_url: str = "http://127.0.0.1:8420/js.stripe.com/v3/"
    stripe_publishable_key: str = "pk_test_local"
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

    # Phone numbers (python -m metering number-scheduler). A number bought is paid
    # for one period; the scheduler charges the next when it falls due. A renewal
    # the balance cannot pay suspends the number, is retried after each interval of
    # the retry schedule (seconds, comma-separated; the last repeats), and the
    # number is released number_release_grace_s after the renewal fell due.
    number_renewal_period_s: float = 30 * 86_400.0
    number_release_grace_s: float = 7 * 86_400.0
    number_renewal_retry_schedule_s: str = "3600,21600,86400"
    number_scheduler_poll_interval_s: float = 1.0
    # Numbers renewed per scheduler transaction, and stream entries read per shard.
    number_scheduler_batch_max: int = 100
    number_scheduler_consumer_group: str = "number-scheduler"
    # A stream entry left pending this long by a dead consumer is claimed by another.
    stream_claim_idle_ms: int = 30_000

    # Low-balance alerts and webhooks (python -m metering notifier).
    notifier_poll_interval_s: float = 0.5
    notifier_batch_max: int = 100
    notifier_consumer_group: str = "notifier"
    # An email the notifier could not send is tried again after this, at most
    # notifier_email_attempts_max times.
    notifier_email_retry_s: float = 60.0
    notifier_email_attempts_max: int = 10
    # Webhook deliveries: each POST may take webhook_timeout_s; a failed one is
    # retried after webhook_backoff_base_s doubling up to webhook_backoff_max_s,
    # until webhook_retry_window_s after the event; then it is marked failed.
    # At most webhook_concurrency_max deliveries are in flight per notifier, and
    # one per endpoint, so a slow or failing endpoint cannot hold up the others.
    webhook_timeout_s: float = 5.0
    webhook_backoff_base_s: float = 10.0
    webhook_backoff_max_s: float = 3_600.0
    webhook_retry_window_s: float = 3 * 86_400.0
    webhook_concurrency_max: int = 16
    webhooks_per_account_max: int = 10
    # Customers' webhook URLs may not point at loopback, private or link-local
    # addresses unless this is on (ops registrations may).
    webhook_private_targets: bool = False
    # Deliveries listed per webhook on the dashboard.
    webhook_recent_deliveries_max: int = 10

    # Receipts: links in emails start with public_url (where customers reach the
    # gateway); a receipt link carries an HMAC made with receipt_link_key, so it
    # opens that one receipt without a token. Set both in production.
    public_url: str = "http://127.0.0.1:8080"
    receipt_link_key: str = "dev-receipt-link-key"

    # Burn rate on the ops page: the debit scripts count each account's spend in
    # Redis buckets of burn_bucket_s (kept for burn_window_s plus two buckets);
    # the rate is the spend over the last burn_window_s, per minute, sent to ops
    # pages every live_ops_burn_refresh_s.
    burn_window_s: int = 300
    burn_bucket_s: int = 60
    live_ops_burn_refresh_s: float = 5.0

    # Operations: logs, metrics, health, heartbeats, continuous reconcile.
    # Logs are one JSON object per line (json) or plain lines (text); libraries
    # (httpx, Stripe, asyncpg, asyncio, ...) log at log_libraries_level only.
    log_format: str = "json"
    log_libraries_level: str = "warning"
    # Prometheus. Gateway processes add to per-process totals (cheap on the
    # authorize path) written every metrics_flush_interval_s to files in
    # metrics_dir, which /metrics of any of them sums (empty: a private directory
    # the gateway makes at start and removes at exit).
    metrics_dir: str = ""
    metrics_flush_interval_s: float = 1.0
    # Workers (ledger writer, recharge worker, number scheduler, notifier,
    # reconcile --continuous) serve /metrics and /livez on this port (0: none;
    # `--metrics-port` overrides it per process).
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"
    # The ledger lag is exported per group of this many consecutive shards.
    metrics_shards_per_group: int = 16
    # Every worker records a heartbeat in Redis this often; the status endpoint
    # and the metrics call one older than worker_heartbeat_stale_s stale, and
    # forget it after worker_heartbeat_forget_s.
    worker_heartbeat_interval_s: float = 5.0
    worker_heartbeat_stale_s: float = 30.0
    worker_heartbeat_forget_s: float = 86_400.0
    # /readyz: how long a schema check of Postgres is trusted before it is redone.
    readiness_schema_check_interval_s: float = 10.0
    # Continuous reconcile: accounts checked per batch and the pause between
    # batches, so it never competes with traffic for Redis or Postgres.
    reconcile_batch_accounts_max: int = 200
    reconcile_batch_interval_s: float = 1.0
    # A client's X-Request-Id is kept (and returned) when it is at most this long
    # and made of safe characters; otherwise the gateway makes one.
    request_id_length_max: int = 64
    # 0 leaves out what every request pays for observability: request ids, the
    # request and script duration metrics (to measure their cost: python -m bench
    # observability). /metrics, health and logs stay.
    request_metrics: bool = True

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

    def number_retry_schedule(self) -> list[float]:
        """The renewal retry intervals in seconds (the last one repeats)."""
        return [float(part) for part in self.number_renewal_retry_schedule_s.split(",")]

    def check(self) -> None:
        """Refuse settings that would break an invariant rather than fail later."""
        if not 1 <= self.shard_count <= 16_384:
            raise SettingsError("METERING_SHARD_COUNT must be between 1 and 16384")
        for name in (
            "call_grant_s",
            "call_duration_s_max",
            "redis_connections_max",
            "redis_pipeline_batch_max",
            "redis_pipeline_pending_max",
            "request_body_bytes_max",
            "debit_batch_items_max",
            "idempotency_window_s",
            "ledger_backlog_max",
            "ledger_batch_rows_max",
            "activity_page_max",
            "usage_days_max",
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
            "live_sockets_per_token_max",
            "auth_failures_per_client_max",
            "auth_failures_per_token_prefix_max",
            "auth_failure_tracked_max",
            "live_sockets_per_account_max",
            "live_pending_accounts_max",
            "live_frame_accounts_max",
            "live_ops_accounts_max",
            "live_client_frame_bytes_max",
            "number_scheduler_batch_max",
            "notifier_batch_max",
            "notifier_email_attempts_max",
            "webhook_concurrency_max",
            "webhooks_per_account_max",
            "webhook_recent_deliveries_max",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"METERING_{name.upper()} must be at least 1")
        if not 0 <= self.live_ops_sockets_reserved < self.live_sockets_max:
            raise SettingsError(
                "METERING_LIVE_OPS_SOCKETS_RESERVED must be at least 0 and below "
                "METERING_LIVE_SOCKETS_MAX"
            )
        if self.live_send_timeout_s <= 0 or self.live_ops_refresh_s <= 0:
            raise SettingsError(
                "METERING_LIVE_SEND_TIMEOUT_S and METERING_LIVE_OPS_REFRESH_S must be positive"
            )
        if not 0 <= self.call_late_commit_window_s <= self.idempotency_window_s:
            raise SettingsError(
                "METERING_CALL_LATE_COMMIT_WINDOW_S must be between 0 and "
                "METERING_IDEMPOTENCY_WINDOW_S"
            )
        if self.outage_backoff_max_s <= 0:
            raise SettingsError("METERING_OUTAGE_BACKOFF_MAX_S must be positive")
        if self.http_hsts_max_age_s < 0 or self.http_connections_per_client_max < 0:
            raise SettingsError(
                "METERING_HTTP_HSTS_MAX_AGE_S and METERING_HTTP_CONNECTIONS_PER_CLIENT_MAX "
                "must not be negative"
            )
        for name in (
            "http_header_read_timeout_s",
            "http_body_read_timeout_s",
            "http_keep_alive_s",
            "auth_failure_window_s",
            "auth_failure_block_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"METERING_{name.upper()} must be positive")
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
        if self.number_renewal_period_s <= 0 or self.number_release_grace_s < 0:
            raise SettingsError(
                "METERING_NUMBER_RENEWAL_PERIOD_S must be positive and "
                "METERING_NUMBER_RELEASE_GRACE_S not negative"
            )
        try:
            retries = self.number_retry_schedule()
        except ValueError:
            retries = []
        if not retries or min(retries) <= 0:
            raise SettingsError(
                "METERING_NUMBER_RENEWAL_RETRY_SCHEDULE_S must be positive seconds, "
                "comma-separated (e.g. 3600,21600,86400)"
            )
        for name in ("webhook_timeout_s", "webhook_backoff_base_s", "webhook_retry_window_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"METERING_{name.upper()} must be positive")
        if self.burn_bucket_s < 1 or self.burn_window_s % self.burn_bucket_s:
            raise SettingsError(
                "METERING_BURN_WINDOW_S must be a whole number of METERING_BURN_BUCKET_S (>= 1)"
            )
        if self.burn_window_s < self.burn_bucket_s or self.live_ops_burn_refresh_s <= 0:
            raise SettingsError(
                "METERING_BURN_WINDOW_S must hold at least one bucket and "
                "METERING_LIVE_OPS_BURN_REFRESH_S must be positive"
            )
        for name in ("stripe_js_url", "public_url"):
            if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", getattr(self, name)):
                raise SettingsError(f"METERING_{name.upper()} must be an http(s) URL")
        if not self.receipt_link_key:
            raise SettingsError("METERING_RECEIPT_LINK_KEY must not be empty")
        if not self.switch_token or not self.ops_token:
            raise SettingsError("METERING_SWITCH_TOKEN and METERING_OPS_TOKEN must not be empty")
        self._check_operations()

    def _check_operations(self) -> None:
        levels = ("debug", "info", "warning", "error", "critical")
        for name in ("log_level", "log_libraries_level"):
            if getattr(self, name).lower() not in levels:
                raise SettingsError(f"METERING_{name.upper()} must be one of {', '.join(levels)}")
        if self.log_format not in ("json", "text"):
            raise SettingsError("METERING_LOG_FORMAT must be json or text")
        if not 0 <= self.worker_metrics_port <= 65_535:
            raise SettingsError("METERING_WORKER_METRICS_PORT must be a port (0: none)")
        for name in (
            "metrics_flush_interval_s",
            "worker_heartbeat_interval_s",
            "worker_heartbeat_stale_s",
            "worker_heartbeat_forget_s",
            "readiness_schema_check_interval_s",
            "reconcile_batch_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"METERING_{name.upper()} must be positive")
        for name in (
            "metrics_shards_per_group",
            "reconcile_batch_accounts_max",
            "request_id_length_max",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"METERING_{name.upper()} must be at least 1")


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
