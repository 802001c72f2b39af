-- expire_holds.lua: return up to N holds of one sale that are past their expiry to stock.
--
-- KEYS[1] meta  KEYS[2] buyers  KEYS[3] holds  KEYS[4] res  KEYS[5] events
--   (layouts as in reserve.lua; tokens and held are fields of meta)
-- ARGV[1] N, the most holds to expire in this call (keeps the script short)
-- ARGV[2] channel to PUBLISH the sale id on when units go back ("" = none)   ARGV[3] the bucket's name (the sale id for bucket 0: engine/keys.py)
--
-- Returns {holds_expired, units_returned, holds_still_due}. Idempotent: a hold is expired
-- once; a second call finds nothing due. {0, 0, 0, "old_layout"}: holds are due but the
-- sale is in the key layout of before the lean gate (as reserve.lua); none is expired.

local now = now_ms()
local limit = tonumber(ARGV[1])
local due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, limit)
local holds, units = 0, 0
-- A sale in the layout of before the lean gate (tokens in a key of its own) is left as
-- it is: counting its units into meta would split its books (README: upgrading).
if #due > 0 and redis.call("HEXISTS", KEYS[1], "tokens") == 0 then
  return {0, 0, 0, "old_layout"}
end
for _, rid in ipairs(due) do
  local rec = redis.call("HGET", KEYS[4], rid)
  redis.call("ZREM", KEYS[3], rid)
  if rec then
    local u, q, s, x, o = parse_record(rec)
    if s == "h" then
      local qty = tonumber(q)
      redis.call("HINCRBY", KEYS[1], "tokens", qty)
      redis.call("HINCRBY", KEYS[1], "held", -qty)
      redis.call("HINCRBY", KEYS[2], "u:" .. u, -qty)
      redis.call("HSET", KEYS[4], rid, format_record(u, q, "e", x, o))
      redis.call("XADD", KEYS[5], "*", "t", "expired", "r", rid, "u", u, "q", qty, "x", x,
        "ts", now)
      holds = holds + 1
      units = units + qty
    end
  end
end
if units > 0 and ARGV[2] and ARGV[2] ~= "" then
  redis.call("PUBLISH", ARGV[2], ARGV[3])
end
local left = redis.call("ZCOUNT", KEYS[3], "-inf", now)
return {holds, units, left}
