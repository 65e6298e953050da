-- fast_forward.lua: bring one account that lost its last changes (a Redis that
-- came back from an append-only file missing its last second) up to the
-- Postgres ledger, so its next change continues the ledger's seq instead of
-- reusing one (metering/ledger/recovery.py decides what to pass).
-- KEYS[1] account hash  KEYS[2] account's open calls set  KEYS[3] shard expiry zset
-- KEYS[4..] the hash of every call in the open calls set, in ARGV[7..]'s order
-- ARGV[1] account_id  ARGV[2] the ledger's last seq  ARGV[3] the ledger's balance after it
-- ARGV[4] idempotency window s  ARGV[5] live channel  ARGV[6] number of open calls passed
-- ARGV[7..] per open call, 5 values: call_id, state to settle it in ('' keeps it open,
--   'committed', 'expired' or 'released'), the closing's charge (micros, >= 0), its
--   time (us) and its stored answer ('' for an expiry)
-- Returns {'fast_forwarded', seq_before, reserved_after, calls_kept, calls_settled}
--      or {'not_behind', seq} | {'unknown_account', 0}
--      or {'calls_changed', 0}: the open calls are not the ones passed (read again)
--
-- The ledger holds every change up to ARGV[2]; Redis lost those after its own
-- seq. So the balance and seq become the ledger's. A call still open here whose
-- closing the ledger holds (a commit, an expiry or a late correction Redis lost)
-- is settled as the ledger says, once; every other open call is kept, and the
-- reservation is what those kept calls hold, each hold cut so that together they
-- never exceed the balance. Nothing is charged here: the
-- money already moved in the ledger.
local a = redis.call('HMGET', KEYS[1], 'seq', 'recharge_pending_since_us')
if not a[1] then return {'unknown_account', 0} end
local seq_before = tonumber(a[1])
if seq_before >= tonumber(ARGV[2]) then return {'not_behind', seq_before} end
local count = tonumber(ARGV[6])
if redis.call('SCARD', KEYS[2]) ~= count then return {'calls_changed', 0} end

local at = now_us()
local reserved, kept, settled = 0, 0, 0
local kept_calls = {}
for i = 1, count do
  local base = 7 + (i - 1) * 5
  local call_id, state = ARGV[base], ARGV[base + 1]
  local call_key = KEYS[3 + i]
  if redis.call('SISMEMBER', KEYS[2], call_id) == 0 then return {'calls_changed', 0} end
  local c = redis.call('HMGET', call_key, 'state', 'held')
  if state == '' and c[1] == 'open' then
    reserved = reserved + num(c[2])
    kept = kept + 1
    kept_calls[kept] = {call_key, num(c[2])}
  else
    local closed_us = ARGV[base + 3]
    if state == '' then state, closed_us = 'settled', int(at) end  -- not open: a stray member
    redis.call('HSET', call_key, 'state', state, 'closed_us', closed_us, 'recovered_us', int(at))
    if state == 'expired' then
      redis.call('HSET', call_key, 'expired_charge', ARGV[base + 2])
    elseif state == 'committed' then
      redis.call('HSET', call_key, 'commit_answer', ARGV[base + 4])
    elseif state == 'released' then
      redis.call('HSET', call_key, 'release_answer', ARGV[base + 4])
    end
    redis.call('EXPIRE', call_key, ARGV[4])
    redis.call('SREM', KEYS[2], call_id)
    redis.call('ZREM', KEYS[3], expiry_member(ARGV[1], call_id))
    settled = settled + 1
  end
end

local balance = tonumber(ARGV[3])
-- A kept call may be one whose release Redis lost (a release that charged
-- nothing leaves no ledger entry), and the ledger's balance may have been spent
-- below what it held since: no call may hold more than the balance left, or
-- available would be negative. Holds are cut in the calls' order.
if reserved > balance then
  local left = balance
  reserved = 0
  for _, kc in ipairs(kept_calls) do
    local held = math.min(kc[2], left)
    if held ~= kc[2] then redis.call('HSET', kc[1], 'held', int(held)) end
    left = left - held
    reserved = reserved + held
  end
end
redis.call('HSET', KEYS[1], 'balance', ARGV[3], 'seq', ARGV[2], 'reserved', int(reserved),
  'recovered_us', int(at))
local pending_since = nil
if is_set(a[2]) then pending_since = a[2] end
publish(ARGV[5], ARGV[1], 'recover', '', 0, balance, reserved, tonumber(ARGV[2]), at, pending_since)
return {'fast_forwarded', seq_before, reserved, kept, settled}
