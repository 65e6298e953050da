-- release.lua: the call never connected. Nothing is charged; the reservation returns.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set  KEYS[4] shard expiry zset
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] idempotency window s  ARGV[4] live channel
-- Returns {'ok', replayed, released_micros, balance_micros, reserved_micros}
--      or {'unknown_call', 0} | {'call_closed', 0, state}
local c = redis.call('HMGET', KEYS[2], 'state', 'held', 'direction', 'release_answer')
if not c[1] then return {'unknown_call', 0} end
if c[1] == 'released' then return replay(c[4], '') end
if c[1] ~= 'open' then return {'call_closed', 0, c[1]} end

local a = redis.call('HMGET', KEYS[1], 'balance', 'reserved', 'seq', 'recharge_pending_since_us')
local balance, reserved, held = tonumber(a[1]), tonumber(a[2]), tonumber(c[2])
reserved = reserved - held
local at = now_us()
redis.call('HSET', KEYS[1], 'reserved', int(reserved))
redis.call('HSET', KEYS[2], 'state', 'released', 'closed_us', int(at),
  'release_answer', answer_text('', {held, balance, reserved}))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1] .. '|' .. ARGV[2])
publish(ARGV[4], ARGV[1], 'release', 'call_' .. c[3], 0, balance, reserved, tonumber(a[3]), at,
  a[4] and a[4] ~= '')
return {'ok', 0, held, balance, reserved}
