-- The card each PaymentIntent charged, for receipts and activity lines
-- ("Payment by Visa ending in 4242"): asked of Stripe once by
-- metering/payments/receipts.py and kept here. Brand and last four digits only.
CREATE TABLE IF NOT EXISTS receipt_cards (
    payment_intent_id  text PRIMARY KEY,
    brand              text NOT NULL,
    last4              text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- The receipt email of a succeeded automatic recharge is sent once per episode.
ALTER TABLE recharge_episodes ADD COLUMN IF NOT EXISTS receipt_emailed_at timestamptz;
