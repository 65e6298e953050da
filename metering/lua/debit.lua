-- debit.lua: one-shot charge (text message, ring-through attempt, number purchase or renewal).
-- KEYS[1] account hash            KEYS[2] request key (first answer)
-- KEYS[3] shard ledger stream     KEYS[4] shard recharge stream
-- KEYS[5] account's numbers hash  KEYS[6] shard numbers stream  KEYS[7] shard events stream
-- KEYS[8] shard spend counters of the current time bucket (burn rate)
-- ARGV[1] account_id  ARGV[2] item  ARGV[3] rate card field holding the price
-- ARGV[4] request_id  ARGV[5] fingerprint of the request body  ARGV[6] idempotency window s
-- ARGV[7] ledger backlog max      ARGV[8] live channel          ARGV[9] ledger detail
-- ARGV[10] phone number named ('' for none)  ARGV[11] its role (see _lib.lua number_refusal)
-- ARGV[12] renewal mode a purchase records ('automatic' or 'switch')
-- ARGV[13] time to keep the spend counters, s
-- Returns {'ok', replayed, charged_micros, balance_micros, reserved_micros, seq}
--      or {'insufficient_funds', 0, cost_micros, available_micros}
--      or {'unknown_account', 0} | {'idempotency_conflict', 0} | {'ledger_backlog_full', 0}
--      or {'unknown_number', 0, number} | {'number_suspended', 0, number}
local prior = redis.call('GET', KEYS[2])
if prior then return replay(prior, ARGV[5]) end

local acct = read_account(KEYS[1], ARGV[3], 'number_renewal_micros')
if not acct then return {'unknown_account', 0} end
local refusal = number_refusal(KEYS[5], ARGV[10], ARGV[11])
if refusal then return refusal end
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
count_spend(KEYS[8], ARGV[1], cost, ARGV[13])
record_number(KEYS[5], KEYS[6], ARGV[1], ARGV[10], ARGV[11], ARGV[4], at,
  num(acct.number_renewal_micros), ARGV[12])
balance_alerts(KEYS[1], KEYS[7], ARGV[1], balance, acct, at)
local pending = maybe_request_recharge(KEYS[1], KEYS[4], ARGV[1], balance - reserved, acct, at)
publish(ARGV[8], ARGV[1], 'debit', ARGV[2], -cost, balance, reserved, seq, at, pending)
local answer = {cost, balance, reserved, seq}
redis.call('SET', KEYS[2], answer_text(ARGV[5], answer), 'EX', ARGV[6])
return {'ok', 0, cost, balance, reserved, seq}
