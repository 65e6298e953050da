-- _lib.lua: helpers prepended to every script by metering/scripts.py, so the
-- rounding rule and the ledger/publish formats exist once.
--
-- Lua numbers are doubles: exact for integers below 2^53. Balances are capped at
-- 1e15 micros and prices at 1e9 per minute (metering/money.py), and
-- affordable_seconds never multiplies a balance by 60 unless the product is small.

local function idiv(a, b)
  -- floor(a / b) for non-negative integers, corrected for double rounding
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function ceil_div(a, b)
  -- THE rounding rule: a partial micro-unit is always rounded up
  return idiv(a + b - 1, b)
end

local function int(x)
  return string.format('%d', x)
end

local function num(v)
  if not v then return 0 end
  return tonumber(v)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Calls are billed on a grid: nothing for 0 s, the minimum for the first
-- min_s seconds, then whole increments, each rounded up.
local function billable_seconds(d, min_s, inc_s)
  if d <= 0 then return 0 end
  if d <= min_s then return min_s end
  return min_s + ceil_div(d - min_s, inc_s) * inc_s
end

local function first_unit(min_s, inc_s)
  if min_s > 0 then return min_s end
  return inc_s
end

-- The largest grid point not above s.
local function floor_to_grid(s, min_s, inc_s)
  if min_s > 0 then
    if s < min_s then return 0 end
    return min_s + idiv(s - min_s, inc_s) * inc_s
  end
  return idiv(s, inc_s) * inc_s
end

local function call_cost(s, per_minute)
  return ceil_div(s * per_minute, 60)
end

-- The most billable seconds (on the grid, at most cap_s) that micros buy.
-- cost(s) <= m  <=>  s * rate / 60 <= m  <=>  s <= floor(m * 60 / rate).
local function affordable_seconds(micros, per_minute, min_s, inc_s, cap_s)
  local raw = cap_s
  if micros <= 0 then
    raw = 0
  elseif per_minute > 0 and micros < call_cost(cap_s, per_minute) then
    raw = idiv(micros * 60, per_minute)
  end
  return floor_to_grid(raw, min_s, inc_s)
end

-- A one-shot request's stored answer: "<fingerprint>\n<v1>,<v2>,..."
local function replay(stored, fingerprint)
  local nl = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, nl - 1) ~= fingerprint then
    return {'idempotency_conflict', 0}
  end
  local out = {'ok', 1}
  for v in string.gmatch(string.sub(stored, nl + 1), '[^,]+') do out[#out + 1] = v end
  return out
end

local function answer_text(fingerprint, values)
  local parts = {}
  for i, v in ipairs(values) do
    if type(v) == 'number' then parts[i] = int(v) else parts[i] = v end
  end
  return fingerprint .. '\n' .. table.concat(parts, ',')
end

local function append_ledger(ledger_key, account_id, seq, item, amount, balance_after, request_id, at, detail)
  redis.call('XADD', ledger_key, '*',
    'account_id', account_id, 'seq', int(seq), 'item', item,
    'amount_micros', int(amount), 'balance_after_micros', int(balance_after),
    'request_id', request_id, 'at_us', int(at), 'detail', detail)
end

local function ledger_full(ledger_key, backlog_max)
  return redis.call('XLEN', ledger_key) >= backlog_max
end

-- Every change is published by the script that makes it, so a dashboard moves
-- even when no worker runs. account_id and item are restricted to JSON-safe
-- characters by the callers (metering/fields.py).
local function publish(channel, account_id, event, item, amount, balance, reserved, seq, at, pending)
  local p = 'false'
  if pending then p = 'true' end
  redis.call('PUBLISH', channel, string.format(
    '{"account_id":"%s","event":"%s","item":"%s","amount_micros":%s,"balance_micros":%s,' ..
    '"reserved_micros":%s,"available_micros":%s,"seq":%s,"at_us":%s,"recharge_pending":%s}',
    account_id, event, item, int(amount), int(balance), int(reserved),
    int(balance - reserved), int(seq), int(at), p))
end

-- The account's money fields and its recharge settings, which every script that
-- moves a balance reads together, plus any extra fields named.
-- Returns nil for an unknown account, else
-- {balance, reserved, seq, recharge = {enabled, threshold, amount, pending_since}, [name] = value}.
local function read_account(account_key, ...)
  local extra = {...}
  local a = redis.call('HMGET', account_key, 'balance', 'reserved', 'seq', 'recharge_enabled',
    'recharge_threshold_micros', 'recharge_amount_micros', 'recharge_pending_since_us', unpack(extra))
  if not a[1] then return nil end
  local acct = {balance = tonumber(a[1]), reserved = tonumber(a[2]), seq = tonumber(a[3]),
    recharge = {a[4], a[5], a[6], a[7]}}
  for i, name in ipairs(extra) do acct[name] = a[7 + i] end
  return acct
end

local function recharge_pending(acct)
  local since = acct.recharge[4]
  return since ~= nil and since ~= false and since ~= ''
end

-- Automatic recharge: the first change that takes the available balance below
-- the threshold marks a recharge pending and asks for one; later changes see
-- the mark and ask nothing more until the recharge worker clears it.
-- Returns whether a recharge is pending after this change.
local function maybe_request_recharge(account_key, recharge_key, account_id, available, acct, at)
  local r = acct.recharge
  local pending = recharge_pending(acct)
  if r[1] == '1' and not pending and available < num(r[2]) then
    redis.call('HSET', account_key, 'recharge_pending_since_us', int(at))
    redis.call('XADD', recharge_key, '*', 'account_id', account_id,
      'amount_micros', r[3], 'available_micros', int(available),
      'threshold_micros', r[2], 'at_us', int(at))
    return true
  end
  return pending
end

-- An open call's member in the shard's expiry zset (the sweeper splits it at the
-- first '|'; account ids cannot contain one).
local function expiry_member(account_id, call_id)
  return account_id .. '|' .. call_id
end

-- Close an open call (commit, release, expiry): store the account's money, mark
-- the call with its final state and answer fields, keep it for the idempotency
-- window, and take it out of the open set and the expiry queue.
-- k = {account, call, calls, expiry} (keys the caller received)
local function close_call(k, account_id, call_id, state, acct, at, window_s, ...)
  redis.call('HSET', k.account, 'balance', int(acct.balance), 'reserved', int(acct.reserved),
    'seq', int(acct.seq))
  redis.call('HSET', k.call, 'state', state, 'closed_us', int(at), ...)
  redis.call('EXPIRE', k.call, window_s)
  redis.call('SREM', k.calls, call_id)
  redis.call('ZREM', k.expiry, expiry_member(account_id, call_id))
end

-- ---- end of _lib.lua ----
