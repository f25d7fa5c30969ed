-- The single ~400 B event of single.lua, with a credential per request (scripts/bench-auth).
-- Every request is formatted once in init(), so a run with 50,000 distinct tokens costs wrk no
-- more per request than a run with one key. Settings come from the environment:
--   BENCH_TOKENS    a file with one bearer credential per line (key or JWT); each request takes
--                   the next line, each thread starting elsewhere in the file; unset: no
--                   Authorization header
--   BENCH_XFF       an X-Forwarded-For value (the gateway trusts 127.0.0.1 in the bench), so
--                   that two wrk processes count as two client addresses
--   BENCH_DELAY_MS  a pause after each response, per connection (a rough offered rate)
--   BENCH_COUNT     non-empty: count answers by status, and 429s by the problem's `reason`
--                   (or, for a principal's limit, its `violated-policies`)
-- done() prints "BENCH <requests> <duration µs> <p50 µs> <p99 µs> <non-2xx/3xx> <socket errors>",
-- "STATUS <code> <count>" and "REASON <reason> <count>" lines.
dofile("scripts/bench/single.lua")

local tokens_file = os.getenv("BENCH_TOKENS") or ""
local forwarded_for = os.getenv("BENCH_XFF") or ""
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
local counting = (os.getenv("BENCH_COUNT") or "") ~= ""

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local requests = {}
local request_count = 0
local position = 0

local function format(credential)
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  if credential then headers["Authorization"] = "Bearer " .. credential end
  if forwarded_for ~= "" then headers["X-Forwarded-For"] = forwarded_for end
  return wrk.format(nil, nil, headers, nil)
end

function init(args)
  if tokens_file ~= "" then
    for line in io.lines(tokens_file) do
      if line ~= "" then
        request_count = request_count + 1
        requests[request_count] = format(line)
      end
    end
  end
  if request_count == 0 then
    request_count = 1
    requests[1] = format(nil)
  end
  position = ((thread_index or 0) * 7919) % request_count
end

function request()
  position = position % request_count + 1
  return requests[position]
end

if delay_ms then
  function delay() return delay_ms end
end

if counting then
  statuses = {}
  reasons = {}
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    if status == 429 then
      local reason = string.match(body or "", '"reason" *: *"([^"]*)"')
        or string.match(body or "", '"violated%-policies" *: *%[ *"([^"]*)"') or "none"
      reasons[reason] = (reasons[reason] or 0) + 1
    end
  end
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
  if counting then
    local total = {}
    for _, thread in ipairs(threads) do
      local counts = thread:get("statuses") or {}
      for status, count in pairs(counts) do total[status] = (total[status] or 0) + count end
    end
    for status, count in pairs(total) do io.write(string.format("STATUS %d %d\n", status, count)) end
    local why = {}
    for _, thread in ipairs(threads) do
      local counts = thread:get("reasons") or {}
      for reason, count in pairs(counts) do why[reason] = (why[reason] or 0) + count end
    end
    for reason, count in pairs(why) do io.write(string.format("REASON %s %d\n", reason, count)) end
  end
end
