-- wrk script: one SMS debit per request, every message id unique; or, with a
-- batch size, that many texts per POST /v1/debit-batches request.
-- Arguments after `--`: path, accounts (1 = the hot account "bench-hot", else
-- "bench-<n mod accounts>"), bearer token, run nonce, batch size (0: single).
-- At the end it prints one line "BENCH_JSON {...}" with the counts and the
-- latency percentiles in microseconds (wrk measures each request from its send).
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  accounts = tonumber(args[2])
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[3],
  }
  prefix = args[4] .. "-" .. tid .. "-"
  batch = tonumber(args[5] or "0")
  n = 0
end

local function text()
  n = n + 1
  local account
  if accounts == 1 then account = "bench-hot" else account = "bench-" .. (n % accounts) end
  return '"account_id":"' .. account .. '","message_id":"' .. prefix .. n ..
    '","direction":"outbound"'
end

function request()
  if batch == 0 then
    return wrk.format("POST", path, headers, "{" .. text() .. "}")
  end
  local items = {}
  for i = 1, batch do items[i] = '{"type":"message",' .. text() .. "}" end
  return wrk.format("POST", path, headers, '{"items":[' .. table.concat(items, ",") .. "]}")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
