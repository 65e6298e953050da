-- sync_settings.lua: copy an account's card and recharge settings from Postgres
-- into its hash, keeping the newest: each change in Postgres bumps a version, and
-- an older copy arriving late (a slow request, the repair) changes nothing.
-- KEYS[1] account hash
-- ARGV[1] version (Postgres payment_settings_sync.version)
-- ARGV[2..] field name, value pairs; an empty value removes the field
-- Returns {'ok', applied (1, or 0 when the hash holds this version or a newer one)}
--      or {'unknown_account', 0}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_account', 0} end
local version = tonumber(ARGV[1])
local held = tonumber(redis.call('HGET', KEYS[1], 'payment_settings_version') or '0')
if held >= version then return {'ok', 0} end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], 'payment_settings_version', ARGV[1])
return {'ok', 1}
