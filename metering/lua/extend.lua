-- extend.lua: grant another chunk to an open call, or refuse.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set
-- KEYS[4] shard expiry zset  KEYS[5] shard recharge stream
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] extend_id ('' when the switch sends none)
-- ARGV[4] grant chunk s  ARGV[5] validity grace s  ARGV[6] call duration max s
-- ARGV[7] extends max per call  ARGV[8] live channel
-- Returns {'ok', replayed, granted_s, max_s, validity_s, final, held_micros, balance_micros,
--          reserved_micros, total_granted_s}
--      or {'insufficient_funds', 0, cost_micros, available_micros}
--      or {'unknown_call', 0} | {'call_closed', 0, state} | {'call_extend_limit', 0, limit}
--      or {'call_duration_limit', 0, limit_s}: the grant already reaches the longest
--         call allowed (ARGV[6], on the billing grid), whatever the balance
-- Sharing works as in reserve.lua. max_s is the seconds beyond the current grant
-- that the whole available balance buys.
local c = redis.call('HMGET', KEYS[2], 'state', 'rate', 'inc', 'min', 'granted_s', 'held', 'expires_ms', 'extends', 'direction')
if not c[1] then return {'unknown_call', 0} end
local answer_field = 'extend:' .. ARGV[3]
if ARGV[3] ~= '' then
  local prior = redis.call('HGET', KEYS[2], answer_field)
  if prior then return replay(prior, '') end
end
if c[1] ~= 'open' then return {'call_closed', 0, c[1]} end
local extends = tonumber(c[8])
if extends >= tonumber(ARGV[7]) then return {'call_extend_limit', 0, tonumber(ARGV[7])} end
local rate, inc, min = tonumber(c[2]), tonumber(c[3]), tonumber(c[4])
local total, held = tonumber(c[5]), tonumber(c[6])
local cap = tonumber(ARGV[6])
if total >= floor_to_grid(cap, min, inc) then return {'call_duration_limit', 0, cap} end

local acct = read_account(KEYS[1])
local balance, reserved = acct.balance, acct.reserved
local available = balance - reserved
local reach = affordable_seconds(held + available, rate, min, inc, cap)
local max_s = reach - total
if max_s <= 0 then
  return {'insufficient_funds', 0, call_cost(total + inc, rate) - held, available}
end
local open = redis.call('SCARD', KEYS[3])
local share_reach = affordable_seconds(held + idiv(available, math.max(open, 1)), rate, min, inc, cap)
local chunk = math.max(inc, idiv(tonumber(ARGV[4]), inc) * inc)
local extra = math.min(chunk, math.max(share_reach - total, inc), max_s)
local new_total = total + extra
local new_held = call_cost(new_total, rate)
local final = 0
if new_total >= reach then final = 1 end

local at = now_us()
local now_ms = math.floor(at / 1000)
local expires_ms = math.max(tonumber(c[7]), now_ms + tonumber(ARGV[5]) * 1000) + extra * 1000
local validity = ceil_div(expires_ms - now_ms, 1000)
reserved = reserved + new_held - held
redis.call('HSET', KEYS[1], 'reserved', int(reserved))
redis.call('HSET', KEYS[2], 'granted_s', int(new_total), 'held', int(new_held),
  'expires_ms', int(expires_ms), 'extends', int(extends + 1))
local values = {extra, max_s, validity, final, new_held, balance, reserved, new_total}
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], answer_field, answer_text('', values)) end
redis.call('ZADD', KEYS[4], expires_ms, expiry_member(ARGV[1], ARGV[2]))
local pending = maybe_request_recharge(KEYS[1], KEYS[5], ARGV[1], balance - reserved, acct, at)
publish(ARGV[8], ARGV[1], 'extend', 'call_' .. c[9], 0, balance, reserved, acct.seq, at, pending)
return {'ok', 0, extra, max_s, validity, final, new_held, balance, reserved, new_total}
