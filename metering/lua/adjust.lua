-- adjust.lua: an operator's signed correction of the balance, with a reason (the CLI's
-- `adjust`), as the ledger item adjustment_added or adjustment_taken. Never takes money reserved for open calls, never asks for an automatic
-- recharge (charging a card is the card holder's act, not an operator's).
-- KEYS[1] account hash  KEYS[2] request key (first answer)  KEYS[3] shard ledger stream
-- KEYS[4] shard events stream
-- ARGV[1] account_id  ARGV[2] amount_micros (signed, never 0)  ARGV[3] adjustment id
-- ARGV[4] fingerprint  ARGV[5] idempotency window s  ARGV[6] ledger backlog max
-- ARGV[7] live channel  ARGV[8] ledger detail (the reason)  ARGV[9] balance max
-- Returns {'ok', replayed, amount_micros, balance_micros, reserved_micros, seq}
--      or {'insufficient_funds', 0, taken_micros, available_micros} (a negative adjustment
--         larger than the available balance)
--      or {'unknown_account', 0} | {'idempotency_conflict', 0} | {'ledger_backlog_full', 0}
--      or {'balance_limit', 0, balance_max}
local prior = redis.call('GET', KEYS[2])
if prior then return replay(prior, ARGV[4]) end

local acct = read_account(KEYS[1])
if not acct then return {'unknown_account', 0} end
local balance, reserved, seq = acct.balance, acct.reserved, acct.seq
local amount = tonumber(ARGV[2])
if amount < 0 and balance - reserved < -amount then
  return {'insufficient_funds', 0, -amount, balance - reserved}
end
if balance + amount > tonumber(ARGV[9]) then return {'balance_limit', 0, tonumber(ARGV[9])} end
if ledger_full(KEYS[3], tonumber(ARGV[6])) then return {'ledger_backlog_full', 0} end

local at = now_us()
balance = balance + amount
seq = seq + 1
redis.call('HSET', KEYS[1], 'balance', int(balance), 'seq', int(seq))
local event, item = 'credit', 'adjustment_added'
if amount < 0 then event, item = 'debit', 'adjustment_taken' end
append_ledger(KEYS[3], ARGV[1], seq, item, amount, balance, ARGV[3], at, ARGV[8])
if amount < 0 then
  balance_alerts(KEYS[1], KEYS[4], ARGV[1], balance, acct, at)
else
  rearm_balance_alerts(KEYS[1], balance, acct)
end
publish(ARGV[7], ARGV[1], event, item, amount, balance, reserved, seq, at,
  recharge_pending(acct))
redis.call('SET', KEYS[2], answer_text(ARGV[4], {amount, balance, reserved, seq}), 'EX', ARGV[5])
return {'ok', 0, amount, balance, reserved, seq}
