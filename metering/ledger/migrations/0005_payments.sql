-- Payments, card on file, automatic recharge.
-- Keyed by account_id text without a foreign key: accounts live in Redis and
-- in the ledger's tables (0001-0004), which these tables do not depend on.
-- Only Stripe ids, brand, last four digits and expiry are stored: never a card
-- number or CVC.

CREATE TABLE IF NOT EXISTS stripe_customers (
    account_id   text PRIMARY KEY,
    customer_id  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cards_on_file (
    account_id         text PRIMARY KEY,
    payment_method_id  text NOT NULL,
    brand              text NOT NULL,
    last4              char(4) NOT NULL,
    exp_month          smallint NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year           smallint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS recharge_settings (
    account_id        text PRIMARY KEY,
    enabled           boolean NOT NULL,
    amount_micros     bigint NOT NULL CHECK (amount_micros > 50000000),
    threshold_micros  bigint NOT NULL CHECK (threshold_micros >= 10000000),
    failure_email     text NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per pay-now payment (idempotent by the client's payment id) and per
-- automatic recharge charge.
CREATE TABLE IF NOT EXISTS payments (
    account_id         text NOT NULL,
    payment_id         text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('pay_now', 'automatic_recharge')),
    amount_micros      bigint NOT NULL CHECK (amount_micros > 0),
    status             text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    payment_intent_id  text,
    failure_reason     text,
    credited           boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, payment_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS payments_intent ON payments (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

-- A recharge episode starts when a script marks the account pending
-- (episode_us = recharge_pending_since_us) and ends when a recharge is credited
-- or the account no longer needs one. It is the worker's durable queue.
CREATE TABLE IF NOT EXISTS recharge_episodes (
    account_id          text NOT NULL,
    episode_us          bigint NOT NULL,
    amount_micros       bigint NOT NULL,
    status              text NOT NULL CHECK (status IN ('open', 'succeeded', 'ended')),
    attempts            integer NOT NULL DEFAULT 0,
    declines            integer NOT NULL DEFAULT 0,
    transient_failures  integer NOT NULL DEFAULT 0,
    next_attempt_at_us  bigint NOT NULL,
    last_reason         text,
    emailed_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, episode_us)
);
CREATE INDEX IF NOT EXISTS recharge_episodes_due ON recharge_episodes (next_attempt_at_us)
    WHERE status = 'open';

-- Every charge attempt of an episode, with its outcome and reason.
CREATE TABLE IF NOT EXISTS recharge_attempts (
    account_id         text NOT NULL,
    episode_us         bigint NOT NULL,
    attempt            integer NOT NULL,
    amount_micros      bigint NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'skipped')),
    retryable          boolean NOT NULL,
    reason             text NOT NULL DEFAULT '',
    payment_intent_id  text,
    at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, episode_us, attempt)
);

-- Stripe delivers webhooks at least once: an event id is processed once.
CREATE TABLE IF NOT EXISTS stripe_webhook_events (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    object_id    text,  -- the PaymentIntent the event is about
    deliveries   integer NOT NULL DEFAULT 1,
    received_at  timestamptz NOT NULL DEFAULT now()
);
