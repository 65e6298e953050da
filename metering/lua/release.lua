-- release.lua: the call never connected. Nothing is charged; the reservation returns.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set  KEYS[4] shard expiry zset
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] idempotency window s  ARGV[4] live channel
-- Returns {'ok', replayed, released_micros, balance_micros, reserved_micros}
--      or {'unknown_call', 0} | {'call_closed', 0, state}
local c = redis.call('HMGET', KEYS[2], 'state', 'held', 'direction', 'release_answer')
if not c[1] then return {'unknown_call', 0} end
if c[1] == 'released' then return replay(c[4], '') end
if c[1] ~= 'open' then return {'call_closed', 0, c[1]} end

local acct = read_account(KEYS[1])
local held = tonumber(c[2])
acct.reserved = acct.reserved - held
local at = now_us()
local k = {account = KEYS[1], call = KEYS[2], calls = KEYS[3], expiry = KEYS[4]}
close_call(k, ARGV[1], ARGV[2], 'released', acct, at, ARGV[3],
  'release_answer', answer_text('', {held, acct.balance, acct.reserved}))
publish(ARGV[4], ARGV[1], 'release', 'call_' .. c[3], 0, acct.balance, acct.reserved, acct.seq, at,
  recharge_pending(acct))
return {'ok', 0, held, acct.balance, acct.reserved}
