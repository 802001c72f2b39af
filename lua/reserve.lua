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
-- then 4 fields per attempt, N >= 1 attempts: user_id, quantity (a decimal integer as
-- the engine sends it, stored and streamed as sent), idempotency key, client address.
-- The gateway sends the attempts on one bucket made in one event-loop turn as one run
-- (engine/coalesce.py): EVALSHA's fixed cost is paid once per batch, the way a database
-- group-commits. N = 1 is the plain path.
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
-- Numbers become text once per run: Lua 5.1 and Redis 7.0 turn a number into text with
-- printf's %g, about 4,400 instructions each (strtod for text to number, 1,600), more than
-- a command; so the run's expiry and clock are formatted once and quantities are written
-- as they came (benchmarks/README.md: "Redis instructions per run").

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

-- The attempts, in flat arrays (no table per attempt: a run's garbage is Redis's CPU), and
-- every buyer field they read, each named once: ONE HMGET.
local users, qtys, qtexts, ikeys, units, idems, rls, als = {}, {}, {}, {}, {}, {}, {}, {}
local fields, nf, wanted = {}, 0, {}
for i = 1, count do
  local base = 3 + (i - 1) * 4
  local user = ARGV[base + 1]
  local q = ARGV[base + 2]
  users[i], qtys[i], qtexts[i], ikeys[i] = user, tonumber(q), q, ARGV[base + 3]
  local u, k = "u:" .. user, "k:" .. user .. ":" .. ARGV[base + 3]
  units[i], idems[i] = u, k
  if not wanted[u] then wanted[u] = true; nf = nf + 1; fields[nf] = u end
  if not wanted[k] then wanted[k] = true; nf = nf + 1; fields[nf] = k end
  if rate > 0 then
    local r, a = "r:" .. user, "a:" .. ARGV[base + 4]
    rls[i], als[i] = r, a
    if not wanted[r] then wanted[r] = true; nf = nf + 1; fields[nf] = r end
    if not wanted[a] then wanted[a] = true; nf = nf + 1; fields[nf] = a end
  end
end
-- buyer: field -> value, read once, then kept up to date as the batch decides.
local buyer = {}
local got = redis.call("HMGET", KEYS[2], unpack(fields))
for j = 1, nf do
  buyer[fields[j]] = got[j]
end

-- The reservations an attempt may replay: ONE HMGET of res (only when some key was seen).
-- rec_q / rec_s / rec_x: reservation id -> quantity, state letter, expires_ms.
local rec_q, rec_s, rec_x, stored = {}, {}, {}, {}
for i = 1, count do
  local rid = buyer[idems[i]]
  if rid and not rec_s[rid] then
    rec_s[rid] = true
    stored[#stored + 1] = rid
  end
end
if #stored > 0 then
  local recs = redis.call("HMGET", KEYS[4], unpack(stored))
  for j, rid in ipairs(stored) do
    local _, q, st, x = parse_record(recs[j])
    rec_q[rid], rec_s[rid], rec_x[rid] = tonumber(q), st, tonumber(x)
  end
end

local limit, expires = tonumber(meta[4]), now + tonumber(meta[5])  -- every hold of the run
local expires_text, now_text  -- as text, made at the first admission
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

-- changed: the buyer fields to write, in order; admitted: the attempts admitted, in order,
-- with their ids.
local changed, nc, admitted, rids = {}, 0, {}, {}
local sold_out = {"sold_out"}  -- one table for every such answer of the run

-- Each attempt in arrival order, exactly as if it ran alone after the ones before it.
for i = 1, count do
  local answer, level_r, level_a
  if rate > 0 then
    level_r, level_a = level(rls[i]), level(als[i])
    local wait = 0
    if level_r < 1000 then
      wait = math.ceil((1000 - level_r) / rate)
    end
    if level_a < 1000 then
      wait = math.max(wait, math.ceil((1000 - level_a) / rate))
    end
    if wait > 0 then
      answer = {"rate_limited", wait}
    end
  end
  local qty = qtys[i]
  local previous = buyer[idems[i]]
  if answer then  -- rate limited
  elseif previous then  -- idempotent replay: the same user and key, the original answer
    if rec_q[previous] ~= qty then
      answer = {"idem_reused"}
    else
      local st, x = rec_s[previous], rec_x[previous]
      if st == "h" and x <= now then
        st = "e"
      end
      answer = {"replay", previous, qty, x,
        (st == "h" and "held") or (st == "c" and "confirmed") or (st == "r" and "released")
        or (st == "e" and "expired") or nil}
    end
  elseif inactive then
    answer = inactive
  elseif qty < 1 or qty > limit then
    answer = {"bad_quantity", limit}
  else
    local u = units[i]
    local already = tonumber(buyer[u] or "0")
    -- An empty sale is sold out for everyone, a buyer at their limit included: the answer
    -- every gateway's sold-out flag gives without Redis (engine/refusals.py), so whether
    -- the flag is up yet never changes it.
    if tokens == 0 then
      answer = sold_out
    elseif already + qty > limit then
      answer = {"limit", already, limit}
    elseif tokens < qty then
      answer = sold_out
    else  -- admission: every check passed
      tokens, held = tokens - qty, held + qty
      -- Reservation ids are "<bucket name>-<n>", n = max(last n + 1, Redis clock in
      -- microseconds): never reissued even when Redis forgets its last writes (keys.py).
      seq = math.max(seq + 1, now_us)
      local rid = name .. "-" .. string.format("%d", seq)
      if not now_text then
        expires_text, now_text = string.format("%d", expires), string.format("%d", now)
      end
      local k = idems[i]
      if not changed[u] then changed[u] = true; nc = nc + 1; changed[nc] = u end
      if not changed[k] then changed[k] = true; nc = nc + 1; changed[nc] = k end
      buyer[u], buyer[k] = already + qty, rid
      if rate > 0 then
        local r, a = rls[i], als[i]
        if not changed[r] then changed[r] = true; nc = nc + 1; changed[nc] = r end
        if not changed[a] then changed[a] = true; nc = nc + 1; changed[nc] = a end
        buyer[r] = (level_r - 1000) .. ":" .. now_text
        buyer[a] = (level_a - 1000) .. ":" .. now_text
      end
      rec_q[rid], rec_s[rid], rec_x[rid] = qty, "h", expires
      local n = #admitted + 1
      admitted[n], rids[n] = i, rid
      answer = {"ok", rid, qty, expires, "held", tokens}
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
for j = 1, nc do
  pairs_[2 * j - 1] = changed[j]
  pairs_[2 * j] = buyer[changed[j]]
end
redis.call("HSET", KEYS[2], unpack(pairs_))
local zadd, hset = {}, {}
for j, i in ipairs(admitted) do
  zadd[2 * j - 1], zadd[2 * j] = expires_text, rids[j]
  hset[2 * j - 1] = rids[j]
  hset[2 * j] = format_record(users[i], qtexts[i], "h", expires_text, "")
end
redis.call("ZADD", KEYS[3], unpack(zadd))
redis.call("HSET", KEYS[4], unpack(hset))
for j, i in ipairs(admitted) do
  redis.call("XADD", KEYS[5], "*", "t", "reserved", "r", rids[j], "u", users[i], "q", qtexts[i],
    "x", expires_text, "ts", now_text, "k", ikeys[i])
end
if tokens == 0 and channel ~= "" then
  redis.call("PUBLISH", channel, "-" .. name)
end
return answers
