-- The durable ledger, one row per balance change, exactly as the Lua scripts
-- appended it to the shard stream (metering/ledger_entries.py).
--
-- (account_id, seq) is the identity of an entry: the writer's
-- INSERT ... ON CONFLICT DO NOTHING on it is what makes a redelivered entry land
-- once, and what exposes a different entry under the same key.
--
-- Not partitioned by time, measured (bench/ledger_partition.py, 1M rows): a
-- monthly range partitioning inserted faster (113-128k vs 83-84k rows/s) and
-- served the activity page alike (p50 0.22-0.24 vs 0.26-0.27 ms), but a unique
-- key on a partitioned table must contain the partition key, so (account_id,
-- seq) would no longer be unique across months. The insert is not the limit
-- (the whole writer moves 20-27k rows/s, Redis side included), so the guarantee
-- wins. Revisit for retention (dropping old months) with a partition-local key.
CREATE TABLE ledger_entries (
    account_id            text   NOT NULL,
    seq                   bigint NOT NULL CHECK (seq >= 1),
    item                  text   NOT NULL,
    amount_micros         bigint NOT NULL,
    balance_after_micros  bigint NOT NULL,
    request_id            text   NOT NULL,
    at_us                 bigint NOT NULL,
    detail                text   NOT NULL DEFAULT '',
    PRIMARY KEY (account_id, seq)
);

-- A stream entry whose (account_id, seq) already holds a DIFFERENT row (e.g. a
-- Redis that lost its data and restarted seqs without `rebuild`). The writer
-- keeps it here instead of dropping it, and `reconcile` reports it.
CREATE TABLE ledger_conflicts (
    account_id            text   NOT NULL,
    seq                   bigint NOT NULL,
    item                  text   NOT NULL,
    amount_micros         bigint NOT NULL,
    balance_after_micros  bigint NOT NULL,
    request_id            text   NOT NULL,
    at_us                 bigint NOT NULL,
    detail                text   NOT NULL DEFAULT '',
    seen_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, seq, at_us, request_id)
);
