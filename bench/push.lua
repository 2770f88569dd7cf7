-- wrk script: the Pushgateway equivalent of one beat: each server PUTs its own group,
--   PUT /metrics/job/heartbeat/instance/<server_id>   body: heartbeat_last_seen_seconds <unix time>
-- Ids spread over SERVERS (default 10000); CLOSE=1 sends `Connection: close` (a new
-- connection per push). done() prints BENCH_RESULT {json}, as beat.lua does.
local servers = tonumber(os.getenv("SERVERS") or "10000")
local headers = {["Content-Type"] = "text/plain; version=0.0.4"}
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
  offset = ((offset or 0) + 7919) % servers
  return wrk.format("PUT", "/metrics/job/heartbeat/instance/srv-" .. offset, headers,
                    "heartbeat_last_seen_seconds " .. os.time() .. "\n")
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
