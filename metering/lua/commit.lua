-- commit.lua: hang-up. Charge the real duration, release the rest of the reservation.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set
-- KEYS[4] shard expiry zset  KEYS[5] shard ledger stream  KEYS[6] shard recharge stream
-- KEYS[7] shard events stream (low-balance alerts)
-- KEYS[8] shard spend counters of the current time bucket (burn rate)
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] duration_s  ARGV[4] idempotency window s
-- ARGV[5] late commit window s  ARGV[6] live channel  ARGV[7] time to keep the spend counters, s
-- Returns {'ok', replayed, charged_micros, billed_s, balance_micros, reserved_micros, seq, capped,
--          correction_micros}
--      or {'unknown_call', 0} | {'call_closed', 0, state} | {'idempotency_conflict', 0}
--
-- Never refused for a full ledger backlog: closing a call adds at most one entry
-- per open call (reserve.lua refuses new calls while the backlog is full), and
-- refusing it would leave the call to expire at its whole grant.
--
-- Late commit: a call the sweeper expired (charged its grant) is still corrected
-- by its commit within ARGV[5] seconds of the expiry, once: the charge becomes the
-- one below, the balance moves by the difference (correction_micros, a refund is
-- positive) with a ledger entry whose detail starts with `late_commit`, and the
-- call is committed (a retry replays the answer).
--
-- The charge rule: billed = the duration on the billing grid (minimum, then whole
-- increments, rounded up); charge = cost(billed), but never more than this call's
-- reservation plus the account's available balance, so a call that overran its
-- grant takes the balance to zero at most (capped = 1), never below.
local c = redis.call('HMGET', KEYS[2], 'state', 'rate', 'inc', 'min', 'held', 'direction',
  'commit_answer', 'closed_us', 'expired_charge')
if not c[1] then return {'unknown_call', 0} end
if c[1] == 'committed' then return replay(c[7], ARGV[3]) end
local at = now_us()
local late = c[1] == 'expired' and in_late_window(c[8], ARGV[5], at)
if c[1] ~= 'open' and not late then return {'call_closed', 0, c[1]} end

local acct = read_account(KEYS[1])
local rate, inc, min, held = tonumber(c[2]), tonumber(c[3]), tonumber(c[4]), tonumber(c[5])
local duration = tonumber(ARGV[3])
local billed = billable_seconds(duration, min, inc)
local cost = call_cost(billed, rate)
if late then held = tonumber(c[9]) end  -- what the expiry took stands for the reservation
local can_take = held + math.max(0, acct.balance - acct.reserved)
local charge = math.min(cost, can_take)
local capped = 0
if charge < cost then capped = 1 end
local item = 'call_' .. c[6]

if late then
  local k = {account = KEYS[1], ledger = KEYS[5], events = KEYS[7]}
  local change = correct_expired_call(k, ARGV[1], ARGV[2], acct, item, held, charge, at,
    'late_commit duration_s=' .. ARGV[3] .. ' billed_s=' .. int(billed) .. ' expired_charge=' ..
    int(held) .. ' charge=' .. int(charge) .. (capped == 1 and ' capped' or ''))
  count_spend(KEYS[8], ARGV[1], -change, ARGV[7])
  local values = {charge, billed, acct.balance, acct.reserved, acct.seq, capped, change}
  redis.call('HSET', KEYS[2], 'state', 'committed', 'late_us', int(at),
    'commit_answer', answer_text(ARGV[3], values))
  local pending = maybe_request_recharge(KEYS[1], KEYS[6], ARGV[1], acct.balance - acct.reserved, acct, at)
  publish(ARGV[6], ARGV[1], 'commit', item, change, acct.balance, acct.reserved, acct.seq, at, pending)
  return {'ok', 0, charge, billed, acct.balance, acct.reserved, acct.seq, capped, change}
end

acct.balance = acct.balance - charge
acct.reserved = acct.reserved - held
if charge > 0 then
  acct.seq = acct.seq + 1
  append_ledger(KEYS[5], ARGV[1], acct.seq, item, -charge, acct.balance, ARGV[2], at,
    'duration_s=' .. ARGV[3] .. ' billed_s=' .. int(billed) .. (capped == 1 and ' capped' or ''))
  count_spend(KEYS[8], ARGV[1], charge, ARGV[7])
end
local values = {charge, billed, acct.balance, acct.reserved, acct.seq, capped, 0}
local k = {account = KEYS[1], call = KEYS[2], calls = KEYS[3], expiry = KEYS[4]}
close_call(k, ARGV[1], ARGV[2], 'committed', acct, at, ARGV[4],
  'commit_answer', answer_text(ARGV[3], values))
balance_alerts(KEYS[1], KEYS[7], ARGV[1], acct.balance, acct, at)
local pending = maybe_request_recharge(KEYS[1], KEYS[6], ARGV[1], acct.balance - acct.reserved, acct, at)
publish(ARGV[6], ARGV[1], 'commit', item, -charge, acct.balance, acct.reserved, acct.seq, at, pending)
return {'ok', 0, charge, billed, acct.balance, acct.reserved, acct.seq, capped, 0}
