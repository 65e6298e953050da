-- publish_account.lua: publish what the pages show of an account besides its
-- balance (automatic recharge state, card on file) after it changed. Read and
-- published in one step, so a page never gets an older state after a newer one.
-- KEYS[1] account hash
-- ARGV[1] live channel  ARGV[2] account_id
-- Returns 1, or 0 for an unknown account (nothing published)
local h = redis.call('HMGET', KEYS[1], 'seq', 'recharge_enabled', 'recharge_amount_micros',
  'recharge_threshold_micros', 'recharge_failure_email', 'recharge_pending_since_us',
  'recharge_last_failure', 'recharge_last_failure_at_us', 'recharge_next_attempt_at_us',
  'card_payment_method_id', 'card_brand', 'card_last4', 'card_exp_month', 'card_exp_year')
if not h[1] then return 0 end

-- Hash values are decimal strings already: passed through, so no digit is lost
-- to a double.
local function integer(v)
  if v and string.match(v, '^%-?%d+$') then return v end
  return 'null'
end
local function text(v)
  if v and v ~= '' then return cjson.encode(v) end
  return 'null'
end
local pending = h[6] and h[6] ~= ''
local card = 'null'
if h[10] and h[10] ~= '' then
  card = string.format('{"brand":%s,"last4":%s,"exp_month":%s,"exp_year":%s}',
    text(h[11] or ''), text(h[12] or ''), integer(h[13]), integer(h[14]))
end
redis.call('PUBLISH', ARGV[1], string.format(
  '{"account_id":"%s","event":"account","seq":%s,"at_us":%s,"recharge":{"enabled":%s,' ..
  '"amount_micros":%s,"threshold_micros":%s,"failure_email":%s,"pending":%s,' ..
  '"pending_since_us":%s,"last_failure":%s,"last_failure_at_us":%s,"next_attempt_at_us":%s},' ..
  '"card":%s}',
  ARGV[2], integer(h[1]), int(now_us()), tostring(h[2] == '1'), integer(h[3]), integer(h[4]),
  text(h[5]), tostring(pending), pending and integer(h[6]) or 'null', text(h[7]),
  integer(h[8]), pending and integer(h[9]) or 'null', card))
return 1
