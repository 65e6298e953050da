-- expire_reservations.lua: the sweeper. Close the shard's calls whose validity ran out
-- with no commit or release from the switch.
-- KEYS[1] shard expiry zset  KEYS[2] shard ledger stream  KEYS[3] shard recharge stream
-- ARGV[1] the shard's key base 'm:{sNNN}'  ARGV[2] batch max  ARGV[3] idempotency window s
-- ARGV[4] ledger backlog max  ARGV[5] live channel
-- Returns {expired_count}
--
-- Policy: a forgotten reservation is CHARGED for the seconds granted. The switch
-- was allowed to carry the call that long and never said it did less, so the
-- grant is taken as used (the credit-control practice when a session times out).
-- Never more than was reserved, so never below zero.
--
-- The call and account keys are derived from the zset members; they carry this
-- shard's hash tag, so the script still touches a single slot.
if ledger_full(KEYS[2], tonumber(ARGV[4])) then return {0} end
local at = now_us()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', math.floor(at / 1000), 'LIMIT', 0, tonumber(ARGV[2]))
local base = ARGV[1]
local expired = 0
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local bar = string.find(member, '|', 1, true)
  local account_id = string.sub(member, 1, bar - 1)
  local call_id = string.sub(member, bar + 1)
  local call_key = base .. ':c:' .. account_id .. ':' .. call_id
  local account_key = base .. ':a:' .. account_id
  local c = redis.call('HMGET', call_key, 'state', 'held', 'granted_s', 'direction')
  if c[1] == 'open' then
    local a = redis.call('HMGET', account_key, 'balance', 'reserved', 'seq',
      'recharge_enabled', 'recharge_threshold_micros', 'recharge_amount_micros', 'recharge_pending_since_us')
    local balance, reserved, seq = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
    local held = tonumber(c[2])
    local charge = math.min(held, balance)
    local item = 'call_' .. c[4]
    balance = balance - charge
    reserved = reserved - held
    if charge > 0 then
      seq = seq + 1
      append_ledger(KEYS[2], account_id, seq, item, -charge, balance, call_id, at,
        'expired billed_s=' .. c[3])
    end
    redis.call('HSET', account_key, 'balance', int(balance), 'reserved', int(reserved), 'seq', int(seq))
    redis.call('HSET', call_key, 'state', 'expired', 'closed_us', int(at), 'expired_charge', int(charge))
    redis.call('EXPIRE', call_key, ARGV[3])
    redis.call('SREM', base .. ':calls:' .. account_id, call_id)
    local pending = maybe_request_recharge(account_key, KEYS[3], account_id, balance - reserved, {a[4], a[5], a[6], a[7]}, at)
    publish(ARGV[5], account_id, 'expire', item, -charge, balance, reserved, seq, at, pending)
    expired = expired + 1
  end
end
return {expired}
