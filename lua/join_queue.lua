-- join_queue.lua: put a buyer in a sale's waiting room (one ticket per user), then
-- advance the room. (Loaded after room_advance.lua, which declares KEYS and the answer.)
--
-- ARGV[1] user_id   ARGV[2] client address   ARGV[3] new tickets per second per address
-- (0 = off; burst twice that)   ARGV[4], ARGV[5] tokens and held units in the sale's other
-- buckets (absent or 0 for a sale of one bucket; room_advance.lua)
--
-- A user already waiting or holding a live pass gets the same ticket (tag "replay"); a
-- user whose pass ran out joins again at the back (tag "new", a new arrival number). A
-- sold-out room queues nobody: the ticket is recorded and told sold_out at once.
-- Returns {"no_room"}, {"rate_limited", retry_after_ms}, or the answer of
-- room_advance.lua tagged "new" or "replay". Every check comes before the first write.

if redis.call("EXISTS", KEYS[1]) == 0 then
  return {"no_room"}
end
local user = ARGV[1]
others.tokens, others.held = tonumber(ARGV[4] or "0"), tonumber(ARGV[5] or "0")
local stock = redis.call("HMGET", KEYS[7], "tokens", "held")
local tokens = tonumber(stock[1] or "0") + others.tokens
local held = tonumber(stock[2] or "0") + others.held
local now = now_ms()

local live = redis.call("ZSCORE", KEYS[2], user)
if not live then
  local score = redis.call("ZSCORE", KEYS[4], user)
  live = score and tonumber(score) > now
end
local room = redis.call("HMGET", KEYS[1], "sold_out_ms", "aware")
local sold_out = tonumber(room[1] or "0") > 0 and room[2] == "1" and tokens <= 0 and held <= 0
local seen = redis.call("HGET", KEYS[3], user)
if live or (seen and sold_out) then
  return answer("replay", user, now, advance(now))
end

local rate = tonumber(ARGV[3])
if rate > 0 then
  local field = "a:" .. ARGV[2]
  local burst = rate * 2000
  local level = burst
  local raw = redis.call("HGET", KEYS[6], field)
  if raw then
    local sep = string.find(raw, ":", 1, true)
    level = math.min(burst, tonumber(string.sub(raw, 1, sep - 1))
      + (now - tonumber(string.sub(raw, sep + 1))) * rate)
  end
  if level < 1000 then
    return {"rate_limited", math.ceil((1000 - level) / rate)}
  end
  redis.call("HSET", KEYS[6], field, (level - 1000) .. ":" .. now)
end

local arrival = redis.call("HINCRBY", KEYS[1], "arrivals", 1)
redis.call("HSET", KEYS[3], user, arrival .. ":" .. now)
if sold_out then
  redis.call("HINCRBY", KEYS[1], "told", 1)
else
  redis.call("ZADD", KEYS[2], arrival, user)
end
return answer("new", user, now, advance(now))
