-- throttle_login.lua: count one login attempt of a subject (an account or a client
-- address), or refuse it while the subject's delay runs.
--
-- KEYS[1] subject hash: n -> attempts counted, next -> ms before which none is allowed
-- ARGV[1] now (ms)   ARGV[2] attempts allowed without delay
-- ARGV[3] first delay (ms), doubled at each further attempt   ARGV[4] longest delay (ms)
-- ARGV[5] quiet time after which the subject is forgotten (ms)
--
-- Returns 0 when the attempt is allowed (and counted), else the milliseconds to wait.
-- Refused attempts are not counted, so a delay never grows past ARGV[4]: a stranger can
-- slow an account down, never lock it for good.

local now = tonumber(ARGV[1])
local next_at = tonumber(redis.call("HGET", KEYS[1], "next") or "0")
if now < next_at then
  return next_at - now
end
local n = redis.call("HINCRBY", KEYS[1], "n", 1)
local free = tonumber(ARGV[2])
if n > free then
  local delay = math.min(tonumber(ARGV[3]) * 2 ^ math.min(n - free - 1, 30), tonumber(ARGV[4]))
  redis.call("HSET", KEYS[1], "next", now + delay)
end
redis.call("PEXPIRE", KEYS[1], tonumber(ARGV[5]))
return 0
