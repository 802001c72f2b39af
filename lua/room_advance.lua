-- room_advance.lua: the part every waiting-room script shares (engine/scripts.py loads
-- join_queue.lua and read_queue.lua with prelude.lua and this text in front of them).
--
-- KEYS[1] room     hash: rate (passes per second), pass_ms, margin (percent of the tokens
--                  left that live unused passes may reach), aware (1 = stock-aware, 0 =
--                  rate only), arrivals (counter), credit (milli-passes), credit_ms,
--                  admitted (passes issued), mark_ms, mark_n, measured (milli-passes per
--                  second; -1 unknown), sold_out_ms (0 = not sold out), told
-- KEYS[2] waiting  zset: user -> arrival number (first come, first served)
-- KEYS[3] tickets  hash: user -> "arrival:joined_ms"
-- KEYS[4] passes   zset: user -> pass expiry (ms), every live pass
-- KEYS[5] fresh    zset: user -> pass expiry (ms), live passes not yet used to reserve
-- KEYS[6] throttle hash: join buckets "a:<address>" -> "millitokens:ms"
-- KEYS[7] the sale's meta, as engine/keys.py names it ("tokens": units left; "held":
--         units held that may still come back; its window and state: nobody is admitted
--         before the sale starts or while it is paused, and a sale that has ended or
--         closed has nothing left to wait for); bucket 0's meta for a sale split into
--         buckets: the scripts also take the tokens and held units of its other buckets,
--         read by the gateway just before the call, and add them to bucket 0's (`others`
--         below)
--
-- advance(now) admits the head of the line: at `rate` per second (credit
-- refills continuously, at most one second's worth saved up), and, when stock-aware, only
-- while the live unused passes stay under tokens x (100 + margin) / 100. A stock-aware
-- room with no tokens and no held units (nothing can come back) is sold out: admits
-- nobody and every waiting ticket reads sold_out; units coming back reopen it.
-- The stock is read here, in the same atomic step: a reservation (tokens taken) is
-- always visible before its pass stops counting as unused (gateway, just after), so the
-- room never counts a used pass as a free unit.
-- Times in milliseconds, Redis clock.

local MEASURE_WINDOW_MS = 2000

-- Tokens and held units of the sale's other buckets (0 and 0 for a sale of one bucket),
-- set by the script from its ARGV before it calls advance.
local others = {tokens = 0, held = 0}

local function advance(now)
  local sale = redis.call("HMGET", KEYS[7], "held", "state", "starts_ms", "ends_ms", "tokens")
  local tokens = tonumber(sale[5] or "0") + others.tokens
  local held = tonumber(sale[1] or "0") + others.held
  local ends = tonumber(sale[4] or "0")
  local over = (sale[2] ~= "ready" and sale[2] ~= "paused") or (ends > 0 and now >= ends)
  local holding = sale[2] == "paused" or now < tonumber(sale[3] or "0")
  local r = redis.call("HMGET", KEYS[1], "rate", "pass_ms", "margin", "aware", "credit",
    "credit_ms", "admitted", "mark_ms", "mark_n", "measured", "sold_out_ms", "told")
  local rate, pass_ms, margin = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
  local aware = r[4] == "1"
  local burst = math.max(1000, rate * 1000)
  local admitted = tonumber(r[7] or "0")
  local mark_ms, mark_n = tonumber(r[8] or "0"), tonumber(r[9] or "0")
  local measured = tonumber(r[10] or "-1")
  local sold_out_ms, told = tonumber(r[11] or "0"), tonumber(r[12] or "0")
  -- Credit is a function of time (capped at one second's worth, and a room opens with
  -- it), so it is written only when spent: a look that admits nobody writes nothing,
  -- which keeps looks off the AOF and the replicas.
  local credit = burst
  if r[5] then
    credit = math.min(burst, tonumber(r[5]) + math.max(0, now - tonumber(r[6])) * rate)
  end
  local changes = {}

  if redis.call("ZREMRANGEBYSCORE", KEYS[4], "-inf", now) > 0 then
    redis.call("ZREMRANGEBYSCORE", KEYS[5], "-inf", now)
  end
  local waiting = redis.call("ZCARD", KEYS[2])

  if over or (aware and tokens <= 0 and held <= 0) then
    if sold_out_ms == 0 then
      sold_out_ms = now
      told = told + waiting
      changes = {"sold_out_ms", sold_out_ms, "told", told}
    end
  else
    if sold_out_ms ~= 0 then  -- units came back: the room reopens
      sold_out_ms = 0
      changes = {"sold_out_ms", 0}
    end
    local can = waiting
    if holding then
      can = 0
    end
    if aware then
      local cap = math.ceil(tokens * (100 + margin) / 100) - redis.call("ZCARD", KEYS[5])
      can = math.min(can, cap)
    end
    local k = math.min(math.floor(credit / 1000), can)
    if k > 0 then
      local popped = redis.call("ZPOPMIN", KEYS[2], k)
      local expires = now + pass_ms
      for i = 1, #popped, 2 do
        redis.call("ZADD", KEYS[4], expires, popped[i])
        redis.call("ZADD", KEYS[5], expires, popped[i])
      end
      admitted = admitted + k
      waiting = waiting - k
      for _, v in ipairs({"credit", credit - k * 1000, "credit_ms", now, "admitted", admitted}) do
        changes[#changes + 1] = v
      end
    end
  end

  if mark_ms == 0 or now - mark_ms >= MEASURE_WINDOW_MS then
    if mark_ms ~= 0 then
      measured = math.floor((admitted - mark_n) * 1000000 / (now - mark_ms))
    end
    for _, v in ipairs({"mark_ms", now, "mark_n", admitted, "measured", measured}) do
      changes[#changes + 1] = v
    end
  end
  if #changes > 0 then
    redis.call("HSET", KEYS[1], unpack(changes))
  end
  return {waiting = waiting, admitted = admitted, measured = measured,
          sold_out = sold_out_ms > 0, told = told}
end

-- One ticket's answer: {tag, status, arrival, position, pass_expires_ms, waiting,
-- passes_live, unused_passes, admitted, measured, told, sold_out (1/0)}; status is
-- waiting | admitted | sold_out | expired | none (no ticket); position and expiry are 0
-- when they do not apply.
local function answer(tag, user, now, s)
  local rec = redis.call("HGET", KEYS[3], user)
  local status, arrival, position, expires = "none", 0, 0, 0
  if rec then
    arrival = tonumber(string.match(rec, "^(%d+)"))
    status = "expired"
    local rank = redis.call("ZRANK", KEYS[2], user)
    if rank then
      status, position = "waiting", rank + 1
    else
      local score = redis.call("ZSCORE", KEYS[4], user)
      if score and tonumber(score) > now then
        status, expires = "admitted", tonumber(score)
      end
    end
    if s.sold_out then
      status = "sold_out"
    end
  end
  return {tag, status, arrival, position, expires, s.waiting, redis.call("ZCARD", KEYS[4]),
          redis.call("ZCARD", KEYS[5]), s.admitted, s.measured, s.told, s.sold_out and 1 or 0}
end
