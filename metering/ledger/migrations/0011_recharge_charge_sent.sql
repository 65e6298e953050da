-- The charge the recharge worker sent to Stripe for an episode and has no final
-- answer to yet (it died waiting, or the answer was lost or a 5xx): its exact
-- request and idempotency key. The next attempt sends that same request again, so
-- Stripe answers the first charge, whatever changed meanwhile (a credit that
-- lifted the balance, recharge turned off), instead of the episode ending without
-- knowing of a charge that was made.
ALTER TABLE recharge_episodes ADD COLUMN IF NOT EXISTS charge_sent json;  -- json, not jsonb: sent again byte for byte
