-- release.lua: the call never connected. Nothing is charged; the reservation returns.
-- KEYS[1] account hash  KEYS[2] call hash  KEYS[3] account's open calls set  KEYS[4] shard expiry zset
-- KEYS[5] shard ledger stream  KEYS[6] shard events stream
-- KEYS[7] shard spend counters of the current time bucket (burn rate)
-- ARGV[1] account_id  ARGV[2] call_id  ARGV[3] idempotency window s  ARGV[4] live channel
-- ARGV[5] late commit window s  ARGV[6] time to keep the spend counters, s
-- Returns {'ok', replayed, released_micros, balance_micros, reserved_micros, correction_micros}
--      or {'unknown_call', 0} | {'call_closed', 0, state}
--
-- A release of a call the sweeper expired, within ARGV[5] seconds of the expiry,
-- refunds the expiry's charge once (correction_micros, a ledger entry whose
-- detail starts with `late_release`), as a late commit corrects it (commit.lua).
local c = redis.call('HMGET', KEYS[2], 'state', 'held', 'direction', 'release_answer', 'closed_us',
  'expired_charge')
if not c[1] then return {'unknown_call', 0} end
if c[1] == 'released' then return replay(c[4], '') end
local at = now_us()
local late = c[1] == 'expired' and in_late_window(c[5], ARGV[5], at)
if c[1] ~= 'open' and not late then return {'call_closed', 0, c[1]} end

local acct = read_account(KEYS[1])
local item = 'call_' .. c[3]
if late then
  local expired_charge = tonumber(c[6])
  local k = {account = KEYS[1], ledger = KEYS[5], events = KEYS[6]}
  local change = correct_expired_call(k, ARGV[1], ARGV[2], acct, item, expired_charge, 0, at,
    'late_release expired_charge=' .. int(expired_charge))
  count_spend(KEYS[7], ARGV[1], -change, ARGV[6])
  redis.call('HSET', KEYS[2], 'state', 'released', 'late_us', int(at),
    'release_answer', answer_text('', {0, acct.balance, acct.reserved, change}))
  publish(ARGV[4], ARGV[1], 'release', item, change, acct.balance, acct.reserved, acct.seq, at,
    recharge_pending(acct))
  return {'ok', 0, 0, acct.balance, acct.reserved, change}
end
local held = tonumber(c[2])
acct.reserved = acct.reserved - held
local k = {account = KEYS[1], call = KEYS[2], calls = KEYS[3], expiry = KEYS[4]}
close_call(k, ARGV[1], ARGV[2], 'released', acct, at, ARGV[3],
  'release_answer', answer_text('', {held, acct.balance, acct.reserved, 0}))
publish(ARGV[4], ARGV[1], 'release', item, 0, acct.balance, acct.reserved, acct.seq, at,
  recharge_pending(acct))
return {'ok', 0, held, acct.balance, acct.reserved, 0}
