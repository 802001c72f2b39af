-- reserve.lua: admit one reservation attempt for a flash sale, atomically.
--
-- KEYS[1] meta    hash: product_id, price, starts_ms, ends_ms (0 = open), per_user_limit,
--                 hold_ms, initial, state (ready|paused|closed), and the counters tokens
--                 (units left), held, confirmed, seq (the number of the last id issued)
-- KEYS[2] buyers  hash: "u:<user>" -> units the user holds or bought in this sale,
--                 "k:<user>:<idempotency key>" -> reservation id, and the rate-limit
--                 buckets "r:<user>" / "a:<address>" -> "millitokens:ms"
-- KEYS[3] holds   zset: reservation id -> expiry (ms)
-- KEYS[4] res     hash: reservation id -> its record (format in prelude.lua)
-- KEYS[5] events  stream: one entry per state change, read by the reconciler
-- ARGV[1] the bucket's name: the sale id, or "<sale_id>-<b>" for bucket b >= 1 of a sale
--         split into buckets (engine/keys.py); it prefixes the ids and the messages
-- ARGV[2] user_id   ARGV[3] quantity   ARGV[4] idempotency key
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
--   {"old_layout"}: the sale was loaded in the key layout of before the lean gate (tokens
--   in a key of its own); `flashsale sale recover --force` moves it (README: upgrading)
-- Every check comes before the first admission write: Redis has no rollback.
--
-- Cost: one HMGET per hash read, one HSET per hash written. A refusal is TIME + 2 HMGETs
-- and writes nothing; an admission adds HSET meta, HSET buyers, ZADD, HSET res, XADD.

local sale_id = ARGV[1]
local user = ARGV[2]
local qty = tonumber(ARGV[3])
local rate = tonumber(ARGV[5])

local now, now_us = clock()

local meta = redis.call("HMGET", KEYS[1], "state", "starts_ms", "ends_ms", "per_user_limit",
  "hold_ms", "tokens", "held", "seq")
if not meta[1] then
  return {"no_sale"}
end
if not meta[6] then  -- the layout of before the lean gate (README: upgrading)
  return {"old_layout"}
end

local units_field = "u:" .. user
local key_field = "k:" .. user .. ":" .. ARGV[4]
local who
if rate > 0 then
  who = redis.call("HMGET", KEYS[2], units_field, key_field, "r:" .. user, "a:" .. ARGV[6])
else
  who = redis.call("HMGET", KEYS[2], units_field, key_field)
end

-- Token buckets, one per user and one per client address, refilled at `rate` per second
-- with a burst of twice that. Only an admission takes a token (written with the
-- admission's own HSET): a refusal or a replay writes nothing, so it costs Redis no more
-- than the rate_limited answer would; a throttled buyer or address is refused all the same.
local levels
if rate > 0 then
  local burst = rate * 2000
  levels = {}
  local wait = 0
  for i = 1, 2 do
    local level = burst
    local raw = who[i + 2]
    if raw then
      local sep = string.find(raw, ":", 1, true)
      level = math.min(burst, tonumber(string.sub(raw, 1, sep - 1))
        + (now - tonumber(string.sub(raw, sep + 1))) * rate)
    end
    if level < 1000 then
      wait = math.max(wait, math.ceil((1000 - level) / rate))
    end
    levels[i] = level
  end
  if wait > 0 then
    return {"rate_limited", wait}
  end
end

-- Idempotent replay: the same user and key return the original reservation.
local previous = who[2]
if previous then
  local rec = redis.call("HGET", KEYS[4], previous)
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
local already = tonumber(who[1] or "0")
local tokens = tonumber(meta[6])
if tokens == 0 then  -- (as today's reserve.lua: an empty sale is sold out for everyone)
  return {"sold_out"}
end
if already + qty > limit then
  return {"limit", already, limit}
end
if tokens < qty then
  return {"sold_out"}
end

-- Admission: every check passed.
local left = tokens - qty
-- Reservation ids are "<bucket name>-<n>", n = max(last n + 1, Redis clock in microseconds):
-- never reissued even when Redis forgets its last writes (engine/keys.py says why).
local n = string.format("%d", math.max(tonumber(meta[8] or "0") + 1, now_us))
local rid = sale_id .. "-" .. n
local expires = now + tonumber(meta[5])
redis.call("HSET", KEYS[1], "tokens", left, "held", tonumber(meta[7] or "0") + qty, "seq", n)
if rate > 0 then
  redis.call("HSET", KEYS[2], units_field, already + qty, key_field, rid,
    "r:" .. user, (levels[1] - 1000) .. ":" .. now, "a:" .. ARGV[6],
    (levels[2] - 1000) .. ":" .. now)
else
  redis.call("HSET", KEYS[2], units_field, already + qty, key_field, rid)
end
redis.call("ZADD", KEYS[3], expires, rid)
redis.call("HSET", KEYS[4], rid, format_record(user, qty, "h", expires, ""))
redis.call("XADD", KEYS[5], "*", "t", "reserved", "r", rid, "u", user, "q", qty,
  "x", expires, "ts", now, "k", ARGV[4])
if left == 0 and ARGV[7] and ARGV[7] ~= "" then
  redis.call("PUBLISH", ARGV[7], "-" .. sale_id)
end
return {"ok", rid, qty, expires, "held", left}
