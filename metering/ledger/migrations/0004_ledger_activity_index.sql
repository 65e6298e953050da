-- The activity view filters one account by a time range, newest first.
CREATE INDEX ledger_entries_account_at ON ledger_entries (account_id, at_us);
