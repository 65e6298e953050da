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
-- pending_since is the pending recharge's start (a decimal string), or false.
local function publish(channel, account_id, event, item, amount, balance, reserved, seq, at, pending_since)
  local p = 'false'
  if pending_since then p = 'true,"recharge_pending_since_us":' .. pending_since end
  redis.call('PUBLISH', channel, string.format(
    '{"account_id":"%s","event":"%s","item":"%s","amount_micros":%s,"balance_micros":%s,' ..
    '"reserved_micros":%s,"available_micros":%s,"seq":%s,"at_us":%s,"recharge_pending":%s}',
    account_id, event, item, int(amount), int(balance), int(reserved),
    int(balance - reserved), int(seq), int(at), p))
end

-- The account's money fields and its recharge settings, which every script that
-- moves a balance reads together, plus any extra fields named.
-- Returns nil for an unknown account, else
-- {balance, reserved, seq, recharge = {enabled, threshold, amount, pending_since},
--  alerts = {low_balance_threshold, low_since, zero_since}, [name] = value}.
local function read_account(account_key, ...)
  local extra = {...}
  local a = redis.call('HMGET', account_key, 'balance', 'reserved', 'seq', 'recharge_enabled',
    'recharge_threshold_micros', 'recharge_amount_micros', 'recharge_pending_since_us',
    'alert_low_balance_micros', 'alert_low_since_us', 'alert_zero_since_us', unpack(extra))
  if not a[1] then return nil end
  local acct = {balance = tonumber(a[1]), reserved = tonumber(a[2]), seq = tonumber(a[3]),
    recharge = {a[4], a[5], a[6], a[7]}, alerts = {a[8], a[9], a[10]}}
  for i, name in ipairs(extra) do acct[name] = a[10 + i] end
  return acct
end

-- The pending recharge's start (a decimal string), or false when none is pending.
local function recharge_pending(acct)
  local since = acct.recharge[4]
  if since ~= nil and since ~= false and since ~= '' then return since end
  return false
end

-- Automatic recharge: the first change that takes the available balance below
-- the threshold marks a recharge pending and asks for one; later changes see
-- the mark and ask nothing more until the recharge worker clears it.
-- Returns when the recharge pending after this change started, or false.
local function maybe_request_recharge(account_key, recharge_key, account_id, available, acct, at)
  local r = acct.recharge
  local pending = recharge_pending(acct)
  if r[1] == '1' and not pending and available < num(r[2]) then
    redis.call('HSET', account_key, 'recharge_pending_since_us', int(at))
    redis.call('XADD', recharge_key, '*', 'account_id', account_id,
      'amount_micros', r[3], 'available_micros', int(available),
      'threshold_micros', r[2], 'at_us', int(at))
    return int(at)
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

local function is_set(v)
  return v ~= nil and v ~= false and v ~= ''
end

-- One account event on the shard's events stream (metering/events.py reads it;
-- the notifier records it, emails and sends webhooks). data is a JSON object of
-- numbers and JSON-safe strings. The id is unique per type, account and instant.
local function append_event(events_key, event_type, account_id, at, data)
  redis.call('XADD', events_key, '*', 'event_id', event_type .. ':' .. account_id .. ':' .. int(at),
    'type', event_type, 'account_id', account_id, 'at_us', int(at), 'data', data)
end

-- Low-balance alerts watch the balance, not the available amount: a call's
-- reservation coming and going never makes an alert flap. The first change that
-- takes the balance below the customer's threshold, and the first that takes it
-- to zero, each set a mark and append one event; more debits see the mark and
-- add nothing, however many run at once. A credit that lifts the balance back
-- clears the marks (rearm_balance_alerts), so the next crossing alerts again.
local function balance_alerts(account_key, events_key, account_id, balance, acct, at)
  local threshold = num(acct.alerts[1])
  if threshold > 0 and balance < threshold and not is_set(acct.alerts[2]) then
    redis.call('HSET', account_key, 'alert_low_since_us', int(at))
    append_event(events_key, 'balance.low', account_id, at, string.format(
      '{"balance_micros":%s,"threshold_micros":%s}', int(balance), int(threshold)))
  end
  if balance <= 0 and not is_set(acct.alerts[3]) then
    redis.call('HSET', account_key, 'alert_zero_since_us', int(at))
    append_event(events_key, 'balance.depleted', account_id, at, string.format(
      '{"balance_micros":%s,"threshold_micros":%s}', int(balance), int(threshold)))
  end
end

local function rearm_balance_alerts(account_key, balance, acct)
  if is_set(acct.alerts[2]) and balance >= num(acct.alerts[1]) then
    redis.call('HDEL', account_key, 'alert_low_since_us')
  end
  if is_set(acct.alerts[3]) and balance > 0 then
    redis.call('HDEL', account_key, 'alert_zero_since_us')
  end
end

-- Phone numbers. An account's numbers hash holds each number it holds with its
-- status, 'active' or 'suspended' (a number released is removed). The number
-- scheduler (metering/numbers/) keeps the durable inventory in Postgres.
-- A request names a number in one of these roles:
--   'use'           a call or text to or from it: refused unless the number is active
--   'purchase'      the account buys it: held and active from now on
--   'renewal'       the switch renews it: a held number is active again
--   'auto_renewal'  the scheduler renews it: refused unless the account still holds it
-- Returns a refusal, or nil when the request may go on.
local function number_refusal(numbers_key, number, role)
  if number == '' or (role ~= 'use' and role ~= 'auto_renewal') then return nil end
  local status = redis.call('HGET', numbers_key, number)
  if not status then return {'unknown_number', 0, number} end
  if role == 'use' and status ~= 'active' then return {'number_suspended', 0, number} end
  return nil
end

-- After a purchase or renewal was charged. A purchase, and a switch's renewal of
-- a number the account holds, are told to the scheduler on the shard's numbers
-- stream (its own renewals it records itself).
local function record_number(numbers_key, numbers_stream, account_id, number, role, request_id,
                             at, renewal_micros, mode)
  if number == '' then return end
  local held = redis.call('HEXISTS', numbers_key, number) == 1
  if role == 'purchase' or ((role == 'renewal' or role == 'auto_renewal') and held) then
    redis.call('HSET', numbers_key, number, 'active')
  end
  if role == 'purchase' or (role == 'renewal' and held) then
    redis.call('XADD', numbers_stream, '*', 'kind', role, 'account_id', account_id,
      'number', number, 'request_id', request_id, 'at_us', int(at),
      'renewal_micros', int(renewal_micros), 'renewal', mode)
  end
end

-- The switch's final report (commit or release) on a call the sweeper expired,
-- within the late window: is it still in time?
local function in_late_window(closed_us, window_s, at)
  return closed_us ~= nil and closed_us ~= false and
    tonumber(closed_us) + tonumber(window_s) * 1000000 >= at
end

-- Correct an expired call's charge to the one the switch's final report gives,
-- once: the balance moves by the difference, with one ledger entry (the call's
-- item, its id, `detail` saying so). Returns the change of the balance (a refund
-- is positive). k = {account, ledger, events}.
local function correct_expired_call(k, account_id, call_id, acct, item, expired_charge, charge,
                                    at, detail)
  local change = expired_charge - charge
  if change ~= 0 then
    acct.balance = acct.balance + change
    acct.seq = acct.seq + 1
    redis.call('HSET', k.account, 'balance', int(acct.balance), 'seq', int(acct.seq))
    append_ledger(k.ledger, account_id, acct.seq, item, change, acct.balance, call_id, at, detail)
  end
  if change < 0 then
    balance_alerts(k.account, k.events, account_id, acct.balance, acct, at)
  else
    rearm_balance_alerts(k.account, acct.balance, acct)
  end
  return change
end

-- The ops page's burn rate: what each account spent in the current time bucket
-- (metering/burn.py names the bucket's key and sums the last buckets). A late
-- commit's refund is counted as a negative amount.
local function count_spend(spend_key, account_id, amount, ttl_s)
  if amount == 0 then return end
  redis.call('HINCRBY', spend_key, account_id, int(amount))
  redis.call('EXPIRE', spend_key, ttl_s)
end

-- ---- end of _lib.lua ----
