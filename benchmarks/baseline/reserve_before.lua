-- reserve.lua: admit one reservation attempt for a flash sale, atomically.
--
-- KEYS[1] meta    hash: product_id, price, starts_ms, ends_ms (0 = open), per_user_limit,
--                 hold_ms, initial, state (ready|closed), held, confirmed
-- KEYS[2] tokens  string: units left to sell
-- KEYS[3] buyers  hash: user_id -> units the user holds or bought in this sale
-- KEYS[4] idem    hash: "<user_id>:<idempotency key>" -> reservation id
-- KEYS[5] holds   zset: reservation id -> expiry (ms)
-- KEYS[6] res     hash: reservation id -> "user:qty:state:expires_ms:order_id"
--                 (state h=held c=confirmed r=released e=expired)
-- KEYS[7] seq     string: last reservation sequence number
-- KEYS[8] events  stream: one entry per state change, read by the reconciler
-- KEYS[9] rl      hash: rate-limit buckets "u:<user>" / "a:<address>" -> "millitokens:ms"
-- ARGV[1] sale_id   ARGV[2] user_id   ARGV[3] quantity   ARGV[4] idempotency key
-- ARGV[5] rate limit per second (0 = off)   ARGV[6] client address
--
-- Returns one of (times in milliseconds since the epoch, Redis clock):
--   {"ok", reservation_id, quantity, expires_ms, "held"}
--   {"replay", reservation_id, quantity, expires_ms, state_name}
--   {"no_sale"}  {"not_active", why}  {"rate_limited", retry_after_ms}
--   {"bad_quantity", per_user_limit}  {"limit", units_already, per_user_limit}
--   {"sold_out"}  {"idem_reused"}
-- Every check comes before the first admission write: Redis has no rollback.

local sale_id = ARGV[1]
local user = ARGV[2]
local qty = tonumber(ARGV[3])
local idem_field = user .. ":" .. ARGV[4]
local rate = tonumber(ARGV[5])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local meta = redis.call("HMGET", KEYS[1], "state", "starts_ms", "ends_ms", "per_user_limit",
  "hold_ms")
if not meta[1] then
  return {"no_sale"}
end

local state_names = {h = "held", c = "confirmed", r = "released", e = "expired"}

-- Token buckets, one per user and one per client address, refilled at `rate` per second
-- with a burst of twice that. A refused or replayed request costs a token too.
if rate > 0 then
  local burst = rate * 2000
  local fields = {"u:" .. user, "a:" .. ARGV[6]}
  local levels = {}
  local wait = 0
  for i, field in ipairs(fields) do
    local level, last = burst, now
    local raw = redis.call("HGET", KEYS[9], field)
    if raw then
      local sep = string.find(raw, ":", 1, true)
      level = tonumber(string.sub(raw, 1, sep - 1))
      last = tonumber(string.sub(raw, sep + 1))
      level = math.min(burst, level + (now - last) * rate)
    end
    if level < 1000 then
      wait = math.max(wait, math.ceil((1000 - level) / rate))
    end
    levels[i] = level
  end
  if wait > 0 then
    return {"rate_limited", wait}
  end
  for i, field in ipairs(fields) do
    redis.call("HSET", KEYS[9], field, (levels[i] - 1000) .. ":" .. now)
  end
end

-- Idempotent replay: the same user and key return the original reservation.
local previous = redis.call("HGET", KEYS[4], idem_field)
if previous then
  local rec = redis.call("HGET", KEYS[6], previous)
  local u, q, s, x = string.match(rec, "^([^:]*):([^:]*):([^:]*):([^:]*)")
  if tonumber(q) ~= qty then
    return {"idem_reused"}
  end
  if s == "h" and tonumber(x) <= now then
    s = "e"
  end
  return {"replay", previous, tonumber(q), tonumber(x), state_names[s]}
end

if meta[1] ~= "ready" then
  return {"not_active", meta[1]}
end
if now < tonumber(meta[2]) then
  return {"not_active", "scheduled"}
end
local ends = tonumber(meta[3])
if ends > 0 and now >= ends then
  return {"not_active", "ended"}
end

local limit = tonumber(meta[4])
if qty < 1 or qty > limit then
  return {"bad_quantity", limit}
end
local already = tonumber(redis.call("HGET", KEYS[3], user) or "0")
if already + qty > limit then
  return {"limit", already, limit}
end
if tonumber(redis.call("GET", KEYS[2]) or "0") < qty then
  return {"sold_out"}
end

-- Admission: every check passed.
redis.call("DECRBY", KEYS[2], qty)
redis.call("HINCRBY", KEYS[3], user, qty)
redis.call("HINCRBY", KEYS[1], "held", qty)
local rid = sale_id .. "-" .. redis.call("INCR", KEYS[7])
local expires = now + tonumber(meta[5])
redis.call("ZADD", KEYS[5], expires, rid)
redis.call("HSET", KEYS[6], rid, user .. ":" .. qty .. ":h:" .. expires .. ":")
redis.call("HSET", KEYS[4], idem_field, rid)
redis.call("XADD", KEYS[8], "*", "t", "reserved", "r", rid, "u", user, "q", qty,
  "x", expires, "ts", now, "k", ARGV[4])
return {"ok", rid, qty, expires, "held"}
