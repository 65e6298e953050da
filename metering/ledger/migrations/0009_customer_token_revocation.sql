-- A revoked customer token keeps its row (who had access, and until when) and
-- is never restored by `rebuild`: tokens are restored WHERE revoked_at IS NULL.
ALTER TABLE customer_tokens ADD COLUMN revoked_at timestamptz;
