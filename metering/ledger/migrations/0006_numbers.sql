-- Phone number inventory and renewals (metering/numbers/). A purchase in Redis
-- (debit.lua) is recorded here by the number scheduler from the shard's numbers
-- stream; the scheduler renews each number when it falls due.

CREATE TABLE IF NOT EXISTS numbers (
    account_id          text NOT NULL,
    number              text NOT NULL,
    status              text NOT NULL CHECK (status IN ('active', 'suspended', 'released')),
    -- who renews it: the scheduler, or the switch through /v1/numbers/renewals
    renewal             text NOT NULL CHECK (renewal IN ('automatic', 'switch')),
    purchase_id         text NOT NULL,
    bought_at_us        bigint NOT NULL,
    -- the rate card's renewal price when it was bought
    renewal_micros      bigint NOT NULL,
    -- periods paid so far (1 after the purchase); paid until bought_at + periods * period
    periods_paid        integer NOT NULL DEFAULT 1,
    period_s            double precision NOT NULL,
    -- when the scheduler looks at it next: the due time, or the next retry
    next_attempt_at_us  bigint NOT NULL,
    failed_attempts     integer NOT NULL DEFAULT 0,
    suspended_at_us     bigint,
    released_at_us      bigint,
    release_reason      text,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, number)
);
CREATE INDEX IF NOT EXISTS numbers_due ON numbers (next_attempt_at_us)
    WHERE status IN ('active', 'suspended') AND renewal = 'automatic';
CREATE INDEX IF NOT EXISTS numbers_suspended ON numbers (suspended_at_us)
    WHERE status = 'suspended';

-- Every renewal charge, the scheduler's and the switch's: each pays one period.
CREATE TABLE IF NOT EXISTS number_renewals (
    account_id      text NOT NULL,
    number          text NOT NULL,
    renewal_id      text NOT NULL,
    period          integer NOT NULL,
    source          text NOT NULL CHECK (source IN ('automatic', 'switch')),
    charged_micros  bigint NOT NULL,
    at_us           bigint NOT NULL,
    PRIMARY KEY (account_id, renewal_id)
);
