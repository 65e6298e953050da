-- trim_ledger.lua: drop the ledger entries of one shard that are in Postgres.
-- KEYS[1] shard ledger stream
-- ARGV[1] the ledger writers' consumer group
-- Returns {trimmed_count, min_id_kept}  (min_id_kept '' when nothing was trimmed)
--
-- An entry is in Postgres once the group acknowledged it (writers XACK only after
-- COMMIT). Everything below both the oldest pending entry and the group's
-- last-delivered-id + 1 was delivered and is no longer pending, hence committed.
-- Other consumer groups are not considered: this stream belongs to the writers.
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {0, ''} end
local last = nil
for _, g in ipairs(groups) do
  local name, delivered = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
if not last then return {0, ''} end
local dash = string.find(last, '-', 1, true)
local min_id = string.sub(last, 1, dash) .. int(tonumber(string.sub(last, dash + 1)) + 1)
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
if p[1] > 0 then min_id = p[2] end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', min_id)
return {trimmed, min_id}
