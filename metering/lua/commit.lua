-- commit.lua: hang-up. Charge the real duration, release the rest of the reservation.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set
-- KEYS[4] shard expiry zset  KEYS[5] shard ledger stream  KEYS[6] shard recharge stream
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] duration_s  ARGV[4] idempotency window s
-- ARGV[5] ledger backlog max  ARGV[6] live channel
-- Returns {'ok', replayed, charged_micros, billed_s, balance_micros, reserved_micros, seq, capped}
--      or {'unknown_call', 0} | {'call_closed', 0, state} | {'idempotency_conflict', 0}
--      or {'ledger_backlog_full', 0}
--
-- The charge rule: billed = the duration on the billing grid (minimum, then whole
-- increments, rounded up); charge = cost(billed), but never more than this call's
-- reservation plus the account's available balance, so a call that overran its
-- grant takes the balance to zero at most (capped = 1), never below.
local c = redis.call('HMGET', KEYS[2], 'state', 'rate', 'inc', 'min', 'held', 'direction', 'commit_answer')
if not c[1] then return {'unknown_call', 0} end
if c[1] == 'committed' then return replay(c[7], ARGV[3]) end
if c[1] ~= 'open' then return {'call_closed', 0, c[1]} end
if ledger_full(KEYS[5], tonumber(ARGV[5])) then return {'ledger_backlog_full', 0} end

local a = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'seq',
  'recharge_enabled', 'recharge_threshold_micros', 'recharge_amount_micros', 'recharge_pending_since_us')
local balance, reserved, seq = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
local rate, inc, min, held = tonumber(c[2]), tonumber(c[3]), tonumber(c[4]), tonumber(c[5])
local duration = tonumber(ARGV[3])
local billed = billable_seconds(duration, min, inc)
local cost = call_cost(billed, rate)
local can_take = held + math.max(0, balance - reserved)
local charge = math.min(cost, can_take)
local capped = 0
if charge < cost then capped = 1 end

local at = now_us()
local item = 'call_' .. c[6]
balance = balance - charge
reserved = reserved - held
if charge > 0 then
  seq = seq + 1
  append_ledger(KEYS[5], ARGV[1], seq, item, -charge, balance, ARGV[2], at,
    'duration_s=' .. ARGV[3] .. ' billed_s=' .. int(billed) .. (capped == 1 and ' capped' or ''))
end
redis.call('HSET', KEYS[1], 'balance', int(balance), 'reserved', int(reserved), 'seq', int(seq))
local values = {charge, billed, balance, reserved, seq, capped}
redis.call('HSET', KEYS[2], 'state', 'committed', 'commit_answer', answer_text(ARGV[3], values), 'closed_us', int(at))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1] .. '|' .. ARGV[2])
local pending = maybe_request_recharge(KEYS[1], KEYS[6], ARGV[1], balance - reserved, {a[4], a[5], a[6], a[7]}, at)
publish(ARGV[6], ARGV[1], 'commit', item, -charge, balance, reserved, seq, at, pending)
return {'ok', 0, charge, billed, balance, reserved, seq, capped}
