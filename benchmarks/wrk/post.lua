-- wrk script: POST a reservation body with a unique idempotency key per request, then
-- print a JSON summary (counts and latency percentiles in microseconds) for the harness.
-- Environment: WRK_PATH, WRK_TOKEN (bearer token, may be empty).

local path = os.getenv("WRK_PATH") or "/"
local token = os.getenv("WRK_TOKEN") or ""
local counter = 0
local thread_tag = tostring(math.random(1, 1e9))

function request()
  counter = counter + 1
  local body = '{"quantity":1,"idempotency_key":"w' .. thread_tag .. "-" .. counter .. '"}'
  local headers = {["Content-Type"] = "application/json"}
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local points = {}
  for _, p in ipairs({1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 99, 99.5, 99.9, 99.99}) do
    points[#points + 1] = string.format('"%s": %d', p, latency:percentile(p))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"percentiles_us": {%s}}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(points, ", ")))
end
