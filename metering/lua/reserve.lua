-- reserve.lua: call set-up. Grant a chunk of seconds, moving its cost from the
-- available balance into `reserved`.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set
-- KEYS[4] shard expiry zset  KEYS[5] shard recharge stream  KEYS[6] account's numbers hash
-- KEYS[7] shard ledger stream
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] direction ('outbound'|'inbound')
-- ARGV[4] grant chunk s  ARGV[5] validity grace s  ARGV[6] call duration max s  ARGV[7] live channel
-- ARGV[8] the account's phone number the call is to or from ('' for none): must be active
-- ARGV[9] ledger backlog max
-- Returns {'ok', replayed, granted_s, max_s, validity_s, final, held_micros, balance_micros, reserved_micros}
--      or {'insufficient_funds', 0, cost_micros, available_micros}
--      or {'concurrent_call_limit', 0, limit} | {'unknown_account', 0} | {'idempotency_conflict', 0}
--      or {'unknown_number', 0, number} | {'number_suspended', 0, number}
--      or {'ledger_backlog_full', 0}
--
-- A call's closing (commit, expiry, late commit) is never refused for a full
-- ledger backlog, so a new call is: the entries past ARGV[9] are then bounded by
-- the calls already open, at most two each (the closing and one late correction).
--
-- Sharing: the grant is at most the chunk and at most an equal share of the
-- available balance among the account's open calls (this one included), but
-- never less than one billing unit while the balance buys one. So parallel
-- calls never together reserve more than `balance - reserved`, and a short
-- balance is split among them instead of going whole to the first.
local c = redis.call('HMGET', KEYS[2], 'state', 'direction', 'reserve_answer')
if c[1] then return replay(c[3], ARGV[3]) end

local rate_field = 'call_' .. ARGV[3] .. '_per_minute_micros'
local acct = read_account(KEYS[1], rate_field,
  'call_increment_seconds', 'call_minimum_seconds', 'max_concurrent_calls')
if not acct then return {'unknown_account', 0} end
local refusal = number_refusal(KEYS[6], ARGV[8], 'use')
if refusal then return refusal end
local balance, reserved = acct.balance, acct.reserved
local rate = num(acct[rate_field])
local inc, min = tonumber(acct.call_increment_seconds), tonumber(acct.call_minimum_seconds)
local open = redis.call('SCARD', KEYS[3])
local limit = num(acct.max_concurrent_calls)
if limit > 0 and open >= limit then return {'concurrent_call_limit', 0, limit} end

local cap = tonumber(ARGV[6])
local available = balance - reserved
local unit = first_unit(min, inc)
local max_s = affordable_seconds(available, rate, min, inc, cap)
if max_s == 0 then return {'insufficient_funds', 0, call_cost(unit, rate), available} end
if ledger_full(KEYS[7], tonumber(ARGV[9])) then return {'ledger_backlog_full', 0} end

local chunk = floor_to_grid(tonumber(ARGV[4]), min, inc)
if chunk < unit then chunk = unit end
local share = affordable_seconds(idiv(available, open + 1), rate, min, inc, cap)
local grant = math.min(chunk, math.max(share, unit), max_s)
local held = call_cost(grant, rate)
local final = 0
if grant >= max_s then final = 1 end

local at = now_us()
local validity = grant + tonumber(ARGV[5])
local expires_ms = math.floor(at / 1000) + validity * 1000
reserved = reserved + held
redis.call('HSET', KEYS[1], 'reserved', int(reserved))
local answer = answer_text(ARGV[3], {grant, max_s, validity, final, held, balance, reserved})
redis.call('HSET', KEYS[2], 'state', 'open', 'direction', ARGV[3], 'rate', int(rate),
  'inc', int(inc), 'min', int(min), 'granted_s', int(grant), 'held', int(held),
  'opened_us', int(at), 'expires_ms', int(expires_ms), 'extends', '0', 'reserve_answer', answer)
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], expires_ms, expiry_member(ARGV[1], ARGV[2]))
local pending = maybe_request_recharge(KEYS[1], KEYS[5], ARGV[1], balance - reserved, acct, at)
publish(ARGV[7], ARGV[1], 'reserve', 'call_' .. ARGV[3], 0, balance, reserved, acct.seq, at, pending)
return {'ok', 0, grant, max_s, validity, final, held, balance, reserved}
