-- expire_holds.lua: return up to N holds of one sale that are past their expiry to stock.
--
-- KEYS[1] meta  KEYS[2] tokens  KEYS[3] buyers  KEYS[4] holds  KEYS[5] res  KEYS[6] events
--   (layouts as in reserve.lua)
-- ARGV[1] N, the most holds to expire in this call (keeps the script short)
-- ARGV[2] channel to PUBLISH the sale id on when units go back ("" = none)   ARGV[3] sale id
--
-- Returns {holds_expired, units_returned, holds_still_due}. Idempotent: a hold is expired
-- once; a second call finds nothing due.

local now = now_ms()
local limit = tonumber(ARGV[1])
local due = redis.call("ZRANGEBYSCORE", KEYS[4], "-inf", now, "LIMIT", 0, limit)
local holds, units = 0, 0
for _, rid in ipairs(due) do
  local rec = redis.call("HGET", KEYS[5], rid)
  redis.call("ZREM", KEYS[4], rid)
  if rec then
    local u, q, s, x, o = parse_record(rec)
    if s == "h" then
      local qty = tonumber(q)
      redis.call("INCRBY", KEYS[2], qty)
      redis.call("HINCRBY", KEYS[3], u, -qty)
      redis.call("HINCRBY", KEYS[1], "held", -qty)
      redis.call("HSET", KEYS[5], rid, format_record(u, q, "e", x, o))
      redis.call("XADD", KEYS[6], "*", "t", "expired", "r", rid, "u", u, "q", qty, "x", x,
        "ts", now)
      holds = holds + 1
      units = units + qty
    end
  end
end
if units > 0 and ARGV[2] and ARGV[2] ~= "" then
  redis.call("PUBLISH", ARGV[2], ARGV[3])
end
local left = redis.call("ZCOUNT", KEYS[4], "-inf", now)
return {holds, units, left}
