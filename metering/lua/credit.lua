-- credit.lua: add funds (ops credit, pay now, automatic recharge).
-- KEYS[1] account hash  KEYS[2] request key (first answer)  KEYS[3] shard ledger stream
-- ARGV[1] account_id  ARGV[2] amount_micros (> 0)  ARGV[3] request_id (credit id, or the
--   PaymentIntent of a Stripe charge)
-- ARGV[4] fingerprint  ARGV[5] idempotency window s ('0': the answer is kept forever, as
--   for the credit of a Stripe charge, which must never be credited twice)
-- ARGV[6] ledger backlog max  ARGV[7] live channel  ARGV[8] ledger detail (source and reason)
-- ARGV[9] the recharge episode this credit settles ('' none): clears the account's pending
--   mark if it is still that episode's
-- ARGV[10] balance max
-- Returns {'ok', replayed, credited_micros, balance_micros, reserved_micros, seq}
--      or {'unknown_account', 0} | {'idempotency_conflict', 0} | {'ledger_backlog_full', 0}
--      or {'balance_limit', 0, balance_max}
local prior = redis.call('GET', KEYS[2])
if prior then return replay(prior, ARGV[4]) end

local acct = read_account(KEYS[1])
if not acct then return {'unknown_account', 0} end
local balance, reserved, seq = acct.balance, acct.reserved, acct.seq
local amount = tonumber(ARGV[2])
if balance + amount > tonumber(ARGV[10]) then return {'balance_limit', 0, tonumber(ARGV[10])} end
if ledger_full(KEYS[3], tonumber(ARGV[6])) then return {'ledger_backlog_full', 0} end

local at = now_us()
balance = balance + amount
seq = seq + 1
redis.call('HSET', KEYS[1], 'balance', int(balance), 'seq', int(seq))
local pending = recharge_pending(acct)
if ARGV[9] ~= '' and pending and acct.recharge[4] == ARGV[9] then
  redis.call('HDEL', KEYS[1], 'recharge_pending_since_us', 'recharge_last_failure',
    'recharge_last_failure_at_us', 'recharge_next_attempt_at_us')
  pending = false
end
rearm_balance_alerts(KEYS[1], balance, acct)
append_ledger(KEYS[3], ARGV[1], seq, 'funds_added', amount, balance, ARGV[3], at, ARGV[8])
publish(ARGV[7], ARGV[1], 'credit', 'funds_added', amount, balance, reserved, seq, at, pending)
local answer = answer_text(ARGV[4], {amount, balance, reserved, seq})
if ARGV[5] == '0' then
  redis.call('SET', KEYS[2], answer)
else
  redis.call('SET', KEYS[2], answer, 'EX', ARGV[5])
end
return {'ok', 0, amount, balance, reserved, seq}
