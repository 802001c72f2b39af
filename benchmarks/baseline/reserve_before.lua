-- benchmarks/baseline: lua/reserve.lua as it was before the lean gate (issue 13), on the
-- key layout of then (load_tokens_before.lua); benchmarks/gate_cost.py runs it beside
-- today's script. Not used by the application.
--
-- reserve.lua: admit one reservation attempt for a flash sale, atomically.
--
-- KEYS[1] meta    hash: product_id, price, starts_ms, ends_ms (0 = open), per_user_limit,
--                 hold_ms, initial, state (ready|closed), held, confirmed
-- KEYS[2] tokens  string: units left to sell
-- KEYS[3] buyers  hash: user_id -> units the user holds or bought in this sale
-- KEYS[4] idem    hash: "<user_id>:<idempotency key>" -> reservation id
-- KEYS[5] holds   zset: reservation id -> expiry (ms)
-- KEYS[6] res     hash: reservation id -> its record (format in prelude.lua)
-- KEYS[7] seq     string: the number of the last reservation id issued (see below)
-- KEYS[8] events  stream: one entry per state change, read by the reconciler
-- KEYS[9] rl      hash: rate-limit buckets "u:<user>" / "a:<address>" -> "millitokens:ms"
-- ARGV[1] sale_id   ARGV[2] user_id   ARGV[3] quantity   ARGV[4] idempotency key
-- ARGV[5] rate limit per second (0 = off)   ARGV[6] client address
-- ARGV[7] channel on which the admission that takes the last token PUBLISHes "-<sale_id>"
--         ("" = none): every gateway worker then refuses the sale without Redis until a
--         script that returns tokens publishes "<sale_id>" (engine/refusals.py)
--
-- Returns one of (times in milliseconds since the epoch, Redis clock):
--   {"ok", reservation_id, quantity, expires_ms, "held", tokens_left}
--   {"replay", reservation_id, quantity, expires_ms, state_name}
--   {"no_sale"}  {"not_active", why, ms_until_start (scheduled only)}
--   {"rate_limited", retry_after_ms}
--   {"bad_quantity", per_user_limit}  {"limit", units_already, per_user_limit}
--   {"sold_out"}  {"idem_reused"}
-- Every check comes before the first admission write: Redis has no rollback.

local sale_id = ARGV[1]
local user = ARGV[2]
local qty = tonumber(ARGV[3])
local idem_field = user .. ":" .. ARGV[4]
local rate = tonumber(ARGV[5])

local now, now_us = clock()

local meta = redis.call("HMGET", KEYS[1], "state", "starts_ms", "ends_ms", "per_user_limit",
  "hold_ms")
if not meta[1] then
  return {"no_sale"}
end

-- Token buckets, one per user and one per client address, refilled at `rate` per second
-- with a burst of twice that. A refused or replayed request costs a token too (a buyer
-- hammering a sale they cannot buy from is throttled like any other). Both buckets are
-- read with one HMGET and written with one HSET.
if rate > 0 then
  local burst = rate * 2000
  local fields = {"u:" .. user, "a:" .. ARGV[6]}
  local raw = redis.call("HMGET", KEYS[9], fields[1], fields[2])
  local levels = {}
  local wait = 0
  for i = 1, 2 do
    local level = burst
    if raw[i] then
      local sep = string.find(raw[i], ":", 1, true)
      level = math.min(burst, tonumber(string.sub(raw[i], 1, sep - 1))
        + (now - tonumber(string.sub(raw[i], sep + 1))) * rate)
    end
    if level < 1000 then
      wait = math.max(wait, math.ceil((1000 - level) / rate))
    end
    levels[i] = level
  end
  if wait > 0 then
    return {"rate_limited", wait}
  end
  redis.call("HSET", KEYS[9], fields[1], (levels[1] - 1000) .. ":" .. now,
    fields[2], (levels[2] - 1000) .. ":" .. now)
end

-- Idempotent replay: the same user and key return the original reservation.
local previous = redis.call("HGET", KEYS[4], idem_field)
if previous then
  local rec = redis.call("HGET", KEYS[6], previous)
  local _, q, s, x = parse_record(rec)
  if tonumber(q) ~= qty then
    return {"idem_reused"}
  end
  if s == "h" and tonumber(x) <= now then
    s = "e"
  end
  local state_names = {h = "held", c = "confirmed", r = "released", e = "expired"}
  return {"replay", previous, tonumber(q), tonumber(x), state_names[s]}
end

if meta[1] ~= "ready" then
  return {"not_active", meta[1]}
end
if now < tonumber(meta[2]) then
  return {"not_active", "scheduled", tonumber(meta[2]) - now}
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
local left = redis.call("DECRBY", KEYS[2], qty)
redis.call("HINCRBY", KEYS[3], user, qty)
redis.call("HINCRBY", KEYS[1], "held", qty)
-- Reservation ids are "<sale_id>-<n>", n = max(last n + 1, Redis clock in microseconds):
-- never reissued even when Redis forgets its last writes (engine/keys.py says why).
local n = math.max(tonumber(redis.call("GET", KEYS[7]) or "0") + 1, now_us)
n = string.format("%d", n)
redis.call("SET", KEYS[7], n)
local rid = sale_id .. "-" .. n
local expires = now + tonumber(meta[5])
redis.call("ZADD", KEYS[5], expires, rid)
redis.call("HSET", KEYS[6], rid, format_record(user, qty, "h", expires, ""))
redis.call("HSET", KEYS[4], idem_field, rid)
redis.call("XADD", KEYS[8], "*", "t", "reserved", "r", rid, "u", user, "q", qty,
  "x", expires, "ts", now, "k", ARGV[4])
if left == 0 and ARGV[7] and ARGV[7] ~= "" then
  redis.call("PUBLISH", ARGV[7], "-" .. sale_id)
end
return {"ok", rid, qty, expires, "held", left}
