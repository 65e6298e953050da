-- Low-balance alerts, account events and outbound webhooks (metering/notify/).

CREATE TABLE IF NOT EXISTS alert_settings (
    account_id                    text PRIMARY KEY,
    low_balance_threshold_micros  bigint NOT NULL CHECK (low_balance_threshold_micros >= 0),
    email                         text NOT NULL DEFAULT '',
    updated_at                    timestamptz NOT NULL DEFAULT now()
);

-- What a customer is told about, once per event id (an outbox: emails and webhook
-- deliveries are made from these rows).
CREATE TABLE IF NOT EXISTS account_events (
    event_id              text PRIMARY KEY,
    account_id            text NOT NULL,
    type                  text NOT NULL,
    data                  jsonb NOT NULL,
    at_us                 bigint NOT NULL,
    -- none: this event sends no email; pending, sent, failed
    email_status          text NOT NULL CHECK (email_status IN ('none', 'pending', 'sent', 'failed')),
    email_attempts        integer NOT NULL DEFAULT 0,
    email_next_at_us      bigint NOT NULL DEFAULT 0,
    email_error           text,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS account_events_by_account ON account_events (account_id, at_us);
CREATE INDEX IF NOT EXISTS account_events_email_due ON account_events (email_next_at_us)
    WHERE email_status = 'pending';

-- Registered endpoints: an account's, or (account_id NULL) ops' for every account.
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id            text PRIMARY KEY,
    account_id            text,
    url                   text NOT NULL,
    events                text[] NOT NULL,
    secret                text NOT NULL,
    description           text NOT NULL DEFAULT '',
    consecutive_failures  integer NOT NULL DEFAULT 0,
    last_attempt_at       timestamptz,
    last_status_code      integer,
    last_error            text,
    last_success_at       timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);
CREATE INDEX IF NOT EXISTS webhooks_by_account ON webhooks (account_id) WHERE deleted_at IS NULL;

-- One row per event and endpoint, made when the event is recorded.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    event_id            text NOT NULL,
    webhook_id          text NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at_us  bigint NOT NULL,
    lease_token         text,
    last_status_code    integer,
    last_error          text,
    last_attempt_at     timestamptz,
    succeeded_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, webhook_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at_us)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_recent ON webhook_deliveries (webhook_id, created_at);
