-- wrk script: one request per bearer token from a file, in turn (each join a new buyer),
-- then the same JSON summary as post.lua.
-- Environment: WRK_METHOD (GET or POST), WRK_PATH, WRK_TOKENS (a file, one token a line;
-- empty: no Authorization header).

local method = os.getenv("WRK_METHOD") or "GET"
local path = os.getenv("WRK_PATH") or "/"
local tokens = {}
local file = os.getenv("WRK_TOKENS") or ""
if file ~= "" then
  for line in io.lines(file) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
end
local counter = 0

function request()
  counter = counter + 1
  local headers = {}
  if #tokens > 0 then
    headers["Authorization"] = tokens[(counter - 1) % #tokens + 1]
  end
  return wrk.format(method, path, headers)
end

function done(summary, latency, requests)
  local points = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    points[#points + 1] = string.format('"%s": %d', p, latency:percentile(p))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"percentiles_us": {%s}}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(points, ", ")))
end
