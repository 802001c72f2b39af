-- confirm.lua: a held reservation becomes sold, carrying its order id.
--
-- KEYS[1] meta  KEYS[2] holds  KEYS[3] res  KEYS[4] events  (layouts as in reserve.lua)
-- ARGV[1] reservation id   ARGV[2] user id that must own it   ARGV[3] order id
--
-- Returns {"ok", quantity, expires_ms} (also when already confirmed for this same order:
-- idempotent); {"not_found"}; {"expired"} (past its expiry, swept or not);
-- {"released"}; {"conflict", other_order_id} (confirmed for another order).

local rid = ARGV[1]
local rec = redis.call("HGET", KEYS[3], rid)
if not rec then
  return {"not_found"}
end
local u, q, s, x, o = parse_record(rec)
if u ~= ARGV[2] then
  return {"not_found"}
end
if s == "c" then
  if o == ARGV[3] then
    return {"ok", tonumber(q), tonumber(x)}
  end
  return {"conflict", o}
end
if s == "r" then
  return {"released"}
end
if s == "e" then
  return {"expired"}
end
local now = now_ms()
if tonumber(x) <= now then
  return {"expired"}
end

local qty = tonumber(q)
redis.call("ZREM", KEYS[2], rid)
redis.call("HINCRBY", KEYS[1], "held", -qty)
redis.call("HINCRBY", KEYS[1], "confirmed", qty)
redis.call("HSET", KEYS[3], rid, format_record(u, q, "c", x, ARGV[3]))
redis.call("XADD", KEYS[4], "*", "t", "confirmed", "r", rid, "u", u, "q", qty, "x", x,
  "ts", now, "o", ARGV[3])
return {"ok", qty, tonumber(x)}
