-- wrk script for bench/replicas.py: POST one beat per request to a random server id in
-- 1..SERVERS, with the fleet token. Each thread (and each wrk process, SEED) draws its own
-- sequence, so two wrk processes on two replicas do not march over the same ids in step.
-- done() prints BENCH_RESULT {json}, the line bench/wrk.py reads.
local token = os.getenv("TOKEN") or "dev-fleet-token"
local servers = tonumber(os.getenv("SERVERS") or "10000")
local seed = tonumber(os.getenv("SEED") or "0")
local body = '{"interval":30,"hostname":"bench","agent_version":"bench"}'
local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(seed * 1000 + (id or 0) + os.time())
end

function request()
  return wrk.format("POST", "/api/heartbeat/s" .. math.random(1, servers) .. "/", headers, body)
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
