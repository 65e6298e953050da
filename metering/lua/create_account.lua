-- create_account.lua: a new account at zero balance with its rate card.
-- KEYS[1] account hash  KEYS[2] shard accounts set
-- ARGV[1] account_id  ARGV[2] fingerprint of the creating request  ARGV[3] live channel
-- ARGV[4..] field, value pairs (rate card and settings)
-- Returns {'ok', replayed, created_at_us} or {'account_exists', 0}
local existing = redis.call('HMGET', KEYS[1], 'create_fingerprint', 'created_at_us')
if existing[2] then
  if existing[1] == ARGV[2] then return {'ok', 1, existing[2]} end
  return {'account_exists', 0}
end
local at = now_us()
local fields = {'balance', '0', 'reserved', '0', 'seq', '0',
  'create_fingerprint', ARGV[2], 'created_at_us', int(at)}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[1])
publish(ARGV[3], ARGV[1], 'create', '', 0, 0, 0, 0, at, false)
return {'ok', 0, int(at)}
