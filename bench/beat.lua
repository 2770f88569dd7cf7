-- wrk script: POST one beat per request, server ids spread over SERVERS (default 10000).
-- Usage: TOKEN=... SERVERS=10000 wrk -t2 -c32 -d10s -s bench/beat.lua http://127.0.0.1:8000
local token = os.getenv("TOKEN") or "dev-fleet-token"
local servers = tonumber(os.getenv("SERVERS") or "10000")
local body = '{"interval":30,"seq":1,"hostname":"bench","agent_version":"bench"}'
local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
local counter = 0

function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end

function request()
  offset = (offset or 0) + 7919
  local id = "srv-" .. (offset % servers)
  return wrk.format("POST", "/api/heartbeat/" .. id .. "/", headers, body)
end

local statuses = {}
function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end
