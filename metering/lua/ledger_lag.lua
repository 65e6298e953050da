-- ledger_lag.lua: how far one shard's ledger is behind Postgres.
-- KEYS[1] shard ledger stream
-- ARGV[1] the ledger writers' consumer group
-- Returns {entries_behind, oldest_age_ms}  (oldest_age_ms -1 when nothing is behind)
--
-- entries_behind = delivered-but-unacknowledged + never delivered. Redis 7 tells
-- the group's lag; Redis 6 does not, and the entries after the group's
-- last-delivered-id are counted instead (Redis 6 with the stream length alone
-- showed a committed entry not yet trimmed as behind for good).
local len = redis.call('XLEN', KEYS[1])
if len == 0 then return {0, -1} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function age_ms(id)
  local dash = string.find(id, '-', 1, true)
  return math.max(0, now_ms - tonumber(string.sub(id, 1, dash - 1)))
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
local last, lag = nil, nil
if ok then
  for _, g in ipairs(groups) do
    local name, delivered, g_lag = nil, nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
      if g[i] == 'lag' then g_lag = g[i + 1] end
    end
    if name == ARGV[1] then last, lag = delivered, g_lag end
  end
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
if not last then return {len, age_ms(first)} end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local behind
if type(lag) == 'number' then
  behind = p[1] + lag
else
  -- Redis 6 reports no lag: the entries after last-delivered-id are the ones never
  -- delivered (those up to it are pending or committed and not yet trimmed, few).
  behind = p[1] + len - #redis.call('XRANGE', KEYS[1], '-', last)
end
if behind == 0 then return {0, -1} end
if p[1] > 0 then return {behind, age_ms(p[2])} end
local nxt = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
if nxt then return {behind, age_ms(nxt[1])} end
return {behind, age_ms(first)}
