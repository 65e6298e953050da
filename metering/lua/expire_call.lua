-- expire_call.lua: the sweeper closes one call whose validity ran out with no
-- commit or release from the switch.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set
-- KEYS[4] shard expiry zset  KEYS[5] shard ledger stream  KEYS[6] shard recharge stream
-- KEYS[7] shard events stream (low-balance alerts)
-- KEYS[8] shard spend counters of the current time bucket (burn rate)
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] idempotency window s  ARGV[4] live channel
-- ARGV[5] time to keep the spend counters, s
-- Returns {'expired', charged_micros} | {'not_due', 0}
--
-- Never refused for a full ledger backlog (see commit.lua): a sweeper that waited
-- for the writer would only find more calls past their validity.
-- Policy: a forgotten reservation is CHARGED for the seconds granted. The switch
-- was allowed to carry the call that long and never said it did less, so the
-- grant is taken as used (the credit-control practice when a session times out).
-- Never more than was reserved, so never below zero. The switch's commit or
-- release still corrects the charge within the late window (commit.lua).
--
-- The sweeper picks due calls from the expiry zset before calling this; the
-- script checks again, since an extend may have pushed the call's expiry since.
local member = expiry_member(ARGV[1], ARGV[2])
local at = now_us()
local due_ms = redis.call('ZSCORE', KEYS[4], member)
if not due_ms or tonumber(due_ms) > math.floor(at / 1000) then return {'not_due', 0} end
local c = redis.call('HMGET', KEYS[2], 'state', 'held', 'granted_s', 'direction')
if c[1] ~= 'open' then
  redis.call('ZREM', KEYS[4], member)
  return {'not_due', 0}
end

local acct = read_account(KEYS[1])
local held = tonumber(c[2])
local charge = math.min(held, acct.balance)
local item = 'call_' .. c[4]
acct.balance = acct.balance - charge
acct.reserved = acct.reserved - held
if charge > 0 then
  acct.seq = acct.seq + 1
  append_ledger(KEYS[5], ARGV[1], acct.seq, item, -charge, acct.balance, ARGV[2], at,
    'expired billed_s=' .. c[3])
  count_spend(KEYS[8], ARGV[1], charge, ARGV[5])
end
local k = {account = KEYS[1], call = KEYS[2], calls = KEYS[3], expiry = KEYS[4]}
close_call(k, ARGV[1], ARGV[2], 'expired', acct, at, ARGV[3], 'expired_charge', int(charge))
balance_alerts(KEYS[1], KEYS[7], ARGV[1], acct.balance, acct, at)
local pending = maybe_request_recharge(KEYS[1], KEYS[6], ARGV[1], acct.balance - acct.reserved, acct, at)
publish(ARGV[4], ARGV[1], 'expire', item, -charge, acct.balance, acct.reserved, acct.seq, at, pending)
return {'expired', charge}
