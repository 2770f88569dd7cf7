-- wrk script: POST one beat per request, server ids spread over SERVERS (default 10000).
-- Usage: TOKEN=... SERVERS=10000 wrk -t2 -c32 -d10s -s bench/beat.lua http://127.0.0.1:8000
-- CLOSE=1 sends `Connection: close`, so every beat opens a new connection (as `--once` agents do).
-- DELAY_MS=n waits n ms after each answer on a connection (a paced, lower rate).
-- done() prints one machine-readable line: BENCH_RESULT {json} (see bench/wrk.py).
local token = os.getenv("TOKEN") or "dev-fleet-token"
local servers = tonumber(os.getenv("SERVERS") or "10000")
local body = '{"interval":30,"seq":1,"hostname":"bench","agent_version":"bench"}'
local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
if os.getenv("CLOSE") == "1" then headers["Connection"] = "close" end
-- DELAY_MS paces each connection (a wait after every answer): a rough fixed rate, since
-- wrk has no wrk2-style --rate; bench/run.py calibrates it.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
if delay_ms > 0 then
  function delay() return delay_ms end
end
local counter = 0

function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end

function request()
  -- a prime stride visits every id before repeating one
  offset = ((offset or 0) + 7919) % servers
  return wrk.format("POST", "/api/heartbeat/srv-" .. offset .. "/", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
