-- Money moves once: the durable side of "one credit per Stripe charge, forever",
-- of "at most one automatic recharge in flight per account", and of card and
-- recharge settings that reach Redis even when Redis failed at the first try.

-- A payment row goes pending -> succeeded (the card was charged: a credit is owed)
-- -> credited (Redis holds the credit). Credited only ever follows a success.
ALTER TABLE payments ADD CONSTRAINT payments_credited_only_after_success
    CHECK (NOT credited OR status = 'succeeded');
-- Charges owed a credit (a process died between the charge and the credit, or
-- rebuild found the credit missing from the ledger): the recharge worker's repair.
CREATE INDEX IF NOT EXISTS payments_owed ON payments (updated_at)
    WHERE status = 'succeeded' AND NOT credited;

-- The credit of a Stripe charge carries its PaymentIntent as its ledger request id.
CREATE INDEX IF NOT EXISTS ledger_entries_funds_added ON ledger_entries (account_id, request_id)
    WHERE item = 'funds_added';

-- At most one open episode per account: older duplicates (which the old intake
-- could leave) end first, the newest stays open.
UPDATE recharge_episodes e SET status = 'ended', last_reason = 'superseded by a newer episode',
    updated_at = now()
WHERE e.status = 'open' AND EXISTS (
    SELECT 1 FROM recharge_episodes n
    WHERE n.account_id = e.account_id AND n.status = 'open' AND n.episode_us > e.episode_us);
CREATE UNIQUE INDEX IF NOT EXISTS recharge_episodes_one_open ON recharge_episodes (account_id)
    WHERE status = 'open';

-- One recharge must lift the balance above the threshold (checked for new rows;
-- older rows are refused by the worker, which turns such a recharge off).
ALTER TABLE recharge_settings ADD CONSTRAINT recharge_amount_above_threshold
    CHECK (amount_micros > threshold_micros) NOT VALID;

-- Each change of an account's card or recharge settings bumps `version` in the
-- transaction that makes it; Redis is then given the whole state with that
-- version (lua/sync_settings.lua keeps the highest), and `synced_version`
-- records it. A change Redis missed is found here by the repair.
CREATE TABLE IF NOT EXISTS payment_settings_sync (
    account_id      text PRIMARY KEY,
    version         bigint NOT NULL,
    synced_version  bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_settings_unsynced ON payment_settings_sync (updated_at)
    WHERE synced_version < version;
