-- The durable ledger, one row per balance change, exactly as the Lua scripts
-- appended it to the shard stream (metering/ledger_entries.py).
--
-- (account_id, seq) is the identity of an entry: the writer's
-- INSERT ... ON CONFLICT DO NOTHING on it is what makes a redelivered entry land
-- once. Not partitioned by time: a time-partitioned table needs the partition
-- key in every unique index, so (account_id, seq) would stop being unique across
-- partitions, and the measurements in the README showed no gain at this size
-- (the activity query is an index range scan either way).
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
