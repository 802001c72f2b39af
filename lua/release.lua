-- release.lua: give a reservation's units back to the sale (the owner cancels, a failed
-- payment compensates, or a paid order is cancelled while the sale runs).
--
-- KEYS[1] meta  KEYS[2] buyers  KEYS[3] holds  KEYS[4] res  KEYS[5] events
--   (layouts as in reserve.lua; tokens and held are fields of meta)
-- ARGV[1] reservation id
-- ARGV[2] user id that must own it ("" = any: system compensation)
-- ARGV[3] "1" to also release a confirmed reservation (order cancelled), else "0"
-- ARGV[4] reason (cancelled | payment_failed | order_cancelled | ...)
-- ARGV[5] channel to PUBLISH the sale id on when units go back ("" = none): gateway
--         workers drop their sold-out flag (engine/refusals.py)   ARGV[6] the bucket's name (the sale id for bucket 0: engine/keys.py)
--
-- Returns {"ok", state_name, quantity, expires_ms} where state_name is "released" when
-- this call or an earlier one released it, or "expired" if the sweeper got there first
-- (idempotent); {"not_found"}; {"invalid", state_name} (confirmed and ARGV[3] ~= "1");
-- {"old_layout"} (as reserve.lua).

local rid = ARGV[1]
local rec = redis.call("HGET", KEYS[4], rid)
if not rec then
  return {"not_found"}
end
local u, q, s, x, o = parse_record(rec)
if ARGV[2] ~= "" and ARGV[2] ~= u then
  return {"not_found"}
end
local qty = tonumber(q)
if s == "r" then
  return {"ok", "released", qty, tonumber(x)}
end
if s == "e" then
  return {"ok", "expired", qty, tonumber(x)}
end
if s == "c" and ARGV[3] ~= "1" then
  return {"invalid", "confirmed"}
end

-- A sale in the layout of before the lean gate (tokens in a key of its own) is refused:
-- counting its units into meta would split its books (README: upgrading).
if redis.call("HEXISTS", KEYS[1], "tokens") == 0 then
  return {"old_layout"}
end
local now = now_ms()
redis.call("HINCRBY", KEYS[1], "tokens", qty)
redis.call("HINCRBY", KEYS[2], "u:" .. u, -qty)
if ARGV[5] and ARGV[5] ~= "" then
  redis.call("PUBLISH", ARGV[5], ARGV[6])
end
if s == "h" then
  redis.call("HINCRBY", KEYS[1], "held", -qty)
  redis.call("ZREM", KEYS[3], rid)
else
  redis.call("HINCRBY", KEYS[1], "confirmed", -qty)
end
redis.call("HSET", KEYS[4], rid, format_record(u, q, "r", x, o))
redis.call("XADD", KEYS[5], "*", "t", "released", "r", rid, "u", u, "q", qty, "x", x,
  "ts", now, "f", s, "why", ARGV[4], "o", o)
return {"ok", "released", qty, tonumber(x)}
