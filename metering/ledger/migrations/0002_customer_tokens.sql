-- Customer tokens, kept only as their SHA-256 (hex), so `rebuild` restores
-- dashboard access after a lost Redis without anyone holding the tokens.
CREATE TABLE customer_tokens (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    account_id  text NOT NULL REFERENCES accounts (id),
    label       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_tokens_account ON customer_tokens (account_id);
