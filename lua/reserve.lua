-- reserve.lua: decide N reservation attempts for one flash sale, atomically, in order.
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
-- ARGV[2] rate limit per second (0 = off)
-- ARGV[3] channel on which the batch that takes the last token PUBLISHes "-<bucket name>"
--         ("" = none): every gateway worker then refuses the bucket without Redis until a
--         script that returns tokens publishes "<bucket name>" (engine/refusals.py)
-- then 4 fields per attempt, N >= 1 attempts: user_id, quantity, idempotency key, client
-- address. The gateway sends the attempts on one bucket made in one event-loop turn as one
-- run (engine/coalesce.py): EVALSHA's fixed cost is paid once per batch, the way a
-- database group-commits. N = 1 is the plain path.
--
-- Returns N answers, the i-th exactly what attempt i would get if it ran alone after
-- attempts 1..i-1 (times in milliseconds since the epoch, Redis clock; one TIME per run):
--   {"ok", reservation_id, quantity, expires_ms, "held", tokens_left}
--   {"replay", reservation_id, quantity, expires_ms, state_name}
--   {"no_sale"}  {"not_active", why, ms_until_start (scheduled only)}
--   {"rate_limited", retry_after_ms}
--   {"bad_quantity", per_user_limit}  {"limit", units_already, per_user_limit}
--   {"sold_out"}  {"idem_reused"}
--   {"old_layout"}: the sale was loaded in the key layout of before the lean gate (tokens
--   in a key of its own); `flashsale sale recover --force` moves it (README: upgrading)
-- The same user or idempotency key twice in a batch, the per-user limit, the tokens and
-- the rate-limit buckets are kept in Lua tables between attempts. Every check of every
-- attempt comes before the first write: Redis has no rollback.
--
-- Cost: TIME, HMGET meta, ONE HMGET of every buyer field the batch reads (+ one HMGET res
-- when some attempt may be a replay). A batch without admissions writes nothing; one
-- with admissions adds one HSET meta, one HSET buyers, one ZADD, one HSET res for all of
-- them and one XADD per admission (the reconciler's event format unchanged).

local name = ARGV[1]  -- the bucket's name
local rate = tonumber(ARGV[2])
local channel = ARGV[3]
local count = (#ARGV - 3) / 4

local now, now_us = clock()
local answers = {}

local meta = redis.call("HMGET", KEYS[1], "state", "starts_ms", "ends_ms", "per_user_limit",
  "hold_ms", "tokens", "held", "seq")
if not meta[1] or not meta[6] then  -- no sale; or the layout of before the lean gate
  local answer = {meta[1] and "old_layout" or "no_sale"}
  for i = 1, count do
    answers[i] = answer
  end
  return answers
end

-- The attempts, and every buyer field they read, each named once: ONE HMGET.
local attempts, fields, wanted = {}, {}, {}
local function want(field)
  if not wanted[field] then
    wanted[field] = true
    fields[#fields + 1] = field
  end
end
for i = 1, count do
  local base = 3 + (i - 1) * 4
  local user = ARGV[base + 1]
  local a = {user = user, qty = tonumber(ARGV[base + 2]), key = ARGV[base + 3],
    units = "u:" .. user, idem = "k:" .. user .. ":" .. ARGV[base + 3]}
  want(a.units)
  want(a.idem)
  if rate > 0 then
    a.buckets = {"r:" .. user, "a:" .. ARGV[base + 4]}
    want(a.buckets[1])
    want(a.buckets[2])
  end
  attempts[i] = a
end
-- buyer: field -> value, read once, then kept up to date as the batch decides.
local buyer = {}
local got = redis.call("HMGET", KEYS[2], unpack(fields))
for j, field in ipairs(fields) do
  buyer[field] = got[j]
end

-- The reservations an attempt may replay: ONE HMGET of res (only when some key was seen).
local records, stored = {}, {}
for _, a in ipairs(attempts) do
  local rid = buyer[a.idem]
  if rid and not records[rid] then
    records[rid] = true
    stored[#stored + 1] = rid
  end
end
if #stored > 0 then
  local recs = redis.call("HMGET", KEYS[4], unpack(stored))
  for j, rid in ipairs(stored) do
    local _, q, s, x = parse_record(recs[j])
    records[rid] = {tonumber(q), s, tonumber(x)}
  end
end

local limit, hold_ms = tonumber(meta[4]), tonumber(meta[5])
local tokens, held, seq = tonumber(meta[6]), tonumber(meta[7] or "0"), tonumber(meta[8] or "0")
local inactive
if meta[1] ~= "ready" then
  inactive = {"not_active", meta[1]}
elseif now < tonumber(meta[2]) then
  inactive = {"not_active", "scheduled", tonumber(meta[2]) - now}
elseif tonumber(meta[3]) > 0 and now >= tonumber(meta[3]) then
  inactive = {"not_active", "ended"}
end

-- Token buckets, one per user and one per client address, refilled at `rate` per second
-- with a burst of twice that, stored as "millitokens:ms". Only an admission takes a token
-- (written with the admission's own HSET): a refusal or a replay writes nothing.
local burst = rate * 2000
local function level(field)
  local raw = buyer[field]
  if not raw then
    return burst
  end
  local sep = string.find(raw, ":", 1, true)
  return math.min(burst, tonumber(string.sub(raw, 1, sep - 1))
    + (now - tonumber(string.sub(raw, sep + 1))) * rate)
end

local state_names = {h = "held", c = "confirmed", r = "released", e = "expired"}
local changed, admitted = {}, {}
local function set(field, value)
  if not changed[field] then
    changed[#changed + 1] = field
    changed[field] = true
  end
  buyer[field] = value
end

-- Each attempt in arrival order, exactly as if it ran alone after the ones before it.
for i, a in ipairs(attempts) do
  local answer, levels
  if rate > 0 then
    levels = {level(a.buckets[1]), level(a.buckets[2])}
    local wait = 0
    for b = 1, 2 do
      if levels[b] < 1000 then
        wait = math.max(wait, math.ceil((1000 - levels[b]) / rate))
      end
    end
    if wait > 0 then
      answer = {"rate_limited", wait}
    end
  end
  local previous = buyer[a.idem]
  if answer then  -- rate limited
  elseif previous then  -- idempotent replay: the same user and key, the original answer
    local q, s, x = unpack(records[previous])
    if q ~= a.qty then
      answer = {"idem_reused"}
    else
      if s == "h" and x <= now then
        s = "e"
      end
      answer = {"replay", previous, q, x, state_names[s]}
    end
  elseif inactive then
    answer = inactive
  elseif a.qty < 1 or a.qty > limit then
    answer = {"bad_quantity", limit}
  else
    local already = tonumber(buyer[a.units] or "0")
    if already + a.qty > limit then
      answer = {"limit", already, limit}
    elseif tokens < a.qty then
      answer = {"sold_out"}
    else  -- admission: every check passed
      tokens, held = tokens - a.qty, held + a.qty
      -- Reservation ids are "<bucket name>-<n>", n = max(last n + 1, Redis clock in
      -- microseconds): never reissued even when Redis forgets its last writes (keys.py).
      seq = math.max(seq + 1, now_us)
      local rid = name .. "-" .. string.format("%d", seq)
      local expires = now + hold_ms
      set(a.units, already + a.qty)
      set(a.idem, rid)
      if rate > 0 then
        set(a.buckets[1], (levels[1] - 1000) .. ":" .. now)
        set(a.buckets[2], (levels[2] - 1000) .. ":" .. now)
      end
      records[rid] = {a.qty, "h", expires}
      admitted[#admitted + 1] = {a, rid, expires}
      answer = {"ok", rid, a.qty, expires, "held", tokens}
    end
  end
  answers[i] = answer
end
if #admitted == 0 then
  return answers
end

-- The writes, after every decision: one per structure, one stream entry per admission.
redis.call("HSET", KEYS[1], "tokens", tokens, "held", held, "seq", string.format("%d", seq))
local pairs_ = {}
for _, field in ipairs(changed) do
  pairs_[#pairs_ + 1] = field
  pairs_[#pairs_ + 1] = buyer[field]
end
redis.call("HSET", KEYS[2], unpack(pairs_))
local zadd, hset = {}, {}
for _, h in ipairs(admitted) do
  zadd[#zadd + 1] = h[3]
  zadd[#zadd + 1] = h[2]
  hset[#hset + 1] = h[2]
  hset[#hset + 1] = format_record(h[1].user, h[1].qty, "h", h[3], "")
end
redis.call("ZADD", KEYS[3], unpack(zadd))
redis.call("HSET", KEYS[4], unpack(hset))
for _, h in ipairs(admitted) do
  redis.call("XADD", KEYS[5], "*", "t", "reserved", "r", h[2], "u", h[1].user, "q", h[1].qty,
    "x", h[3], "ts", now, "k", h[1].key)
end
if tokens == 0 and channel ~= "" then
  redis.call("PUBLISH", channel, "-" .. name)
end
return answers
