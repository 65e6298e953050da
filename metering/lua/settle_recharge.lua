-- settle_recharge.lua: end a recharge episode without a credit (recharge turned
-- off, balance back above the threshold, or the episode gave up), so the next
-- fall below the threshold asks for a new recharge.
-- KEYS[1] account hash
-- ARGV[1] episode (the recharge_pending_since_us the episode started with)
-- ARGV[2] last failure text to keep ('' to leave it as it is)
-- Returns {'ok', cleared (1 if this episode's mark was removed, 0 if another or none)}
--      or {'unknown_account', 0}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_account', 0} end
local pending = redis.call('HGET', KEYS[1], 'recharge_pending_since_us')
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'recharge_last_failure', ARGV[2]) end
if pending == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'recharge_pending_since_us')
  return {'ok', 1}
end
return {'ok', 0}
