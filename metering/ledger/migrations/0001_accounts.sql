-- Accounts: the durable copy of what `rebuild` needs to recreate an account's
-- Redis hash (rate card, limits, automatic recharge settings). Balances are not
-- kept here: they are the ledger's last balance_after_micros.
CREATE TABLE accounts (
    id                               text PRIMARY KEY,
    call_outbound_per_minute_micros  bigint NOT NULL CHECK (call_outbound_per_minute_micros >= 0),
    call_inbound_per_minute_micros   bigint NOT NULL CHECK (call_inbound_per_minute_micros >= 0),
    call_increment_seconds           integer NOT NULL CHECK (call_increment_seconds >= 1),
    call_minimum_seconds             integer NOT NULL CHECK (call_minimum_seconds >= 0),
    sms_outbound_micros              bigint NOT NULL CHECK (sms_outbound_micros >= 0),
    sms_inbound_micros               bigint NOT NULL CHECK (sms_inbound_micros >= 0),
    ring_through_attempt_micros      bigint NOT NULL CHECK (ring_through_attempt_micros >= 0),
    number_purchase_micros           bigint NOT NULL CHECK (number_purchase_micros >= 0),
    number_renewal_micros            bigint NOT NULL CHECK (number_renewal_micros >= 0),
    max_concurrent_calls             integer NOT NULL DEFAULT 0 CHECK (max_concurrent_calls >= 0),
    recharge_enabled                 boolean NOT NULL DEFAULT false,
    recharge_amount_micros           bigint,
    recharge_threshold_micros        bigint,
    recharge_failure_email           text,
    created_at_us                    bigint NOT NULL,
    updated_at                       timestamptz NOT NULL DEFAULT now()
);
