-- number_status.lua: the number scheduler or operations change a held number's
-- status (the switch's calls and texts naming it read it, see _lib.lua).
-- KEYS[1] account's numbers hash
-- ARGV[1] number  ARGV[2] action: 'suspend' (an active number stops working),
--         'release' (the account no longer holds it)
-- ARGV[3] the status the number must have for the action ('' for any)
-- Returns {'ok', previous status} or {'unchanged', current status or ''}
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return {'unchanged', ''} end
if ARGV[3] ~= '' and current ~= ARGV[3] then return {'unchanged', current} end
if ARGV[2] == 'suspend' then
  redis.call('HSET', KEYS[1], ARGV[1], 'suspended')
elseif ARGV[2] == 'release' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  return redis.error_reply('number_status: unknown action ' .. ARGV[2])
end
return {'ok', current}
