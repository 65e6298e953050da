-- debit.lua: one-shot charge (text message, ring-through attempt, number purchase or renewal).
-- KEYS[1] account hash            KEYS[2] request key (first answer)
-- KEYS[3] shard ledger stream     KEYS[4] shard recharge stream
-- ARGV[1] account_id  ARGV[2] item  ARGV[3] rate card field holding the price
-- ARGV[4] request_id  ARGV[5] fingerprint of the request body  ARGV[6] idempotency window s
-- ARGV[7] ledger backlog max      ARGV[8] live channel          ARGV[9] ledger detail
-- Returns {'ok', replayed, charged_micros, balance_micros, reserved_micros, seq}
--      or {'insufficient_funds', 0, cost_micros, available_micros}
--      or {'unknown_account', 0} | {'idempotency_conflict', 0} | {'ledger_backlog_full', 0}
local prior = redis.call('GET', KEYS[2])
if prior then return replay(prior, ARGV[5]) end

local acct = read_account(KEYS[1], ARGV[3])
if not acct then return {'unknown_account', 0} end
local balance, reserved, seq, cost = acct.balance, acct.reserved, acct.seq, num(acct[ARGV[3]])
if balance - reserved < cost or (cost == 0 and balance - reserved <= 0) then
  -- at zero every billable action is blocked, even one priced at nothing
  return {'insufficient_funds', 0, cost, balance - reserved}
end
if ledger_full(KEYS[3], tonumber(ARGV[7])) then return {'ledger_backlog_full', 0} end

local at = now_us()
balance = balance - cost
seq = seq + 1
redis.call('HSET', KEYS[1], 'balance', int(balance), 'seq', int(seq))
append_ledger(KEYS[3], ARGV[1], seq, ARGV[2], -cost, balance, ARGV[4], at, ARGV[9])
local pending = maybe_request_recharge(KEYS[1], KEYS[4], ARGV[1], balance - reserved, acct, at)
publish(ARGV[8], ARGV[1], 'debit', ARGV[2], -cost, balance, reserved, seq, at, pending)
local answer = {cost, balance, reserved, seq}
redis.call('SET', KEYS[2], answer_text(ARGV[5], answer), 'EX', ARGV[6])
return {'ok', 0, cost, balance, reserved, seq}
