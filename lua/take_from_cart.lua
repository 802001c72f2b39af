-- take_from_cart.lua: take a paid checkout's units out of the buyer's cart, once.
--
-- KEYS[1] cart   hash: product_id -> '{"q":<quantity>,...}' (orders/cart.py CartLine,
--                encoded with "q" first), plus marker fields "done:<checkout id>" -> ms
-- ARGV[1] marker field of this checkout ("done:<checkout id>")
-- ARGV[2] now (ms)   ARGV[3] how long a marker is kept (ms)   ARGV[4] cart TTL (seconds)
-- ARGV[5], ARGV[6], ... pairs: product id, quantity ordered
--
-- Returns 1 when the units were taken now, 0 when this checkout already took them (its
-- marker is there). A line keeps the units the buyer added while the checkout ran; a
-- line left with none is removed. Markers older than ARGV[3] are dropped.

if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1 then
  return 0
end
local now = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
for i = 5, #ARGV, 2 do
  local raw = redis.call("HGET", KEYS[1], ARGV[i])
  if raw then
    local q, rest = string.match(raw, '^{"q":(%d+)(.*)$')
    if q then
      local left = tonumber(q) - tonumber(ARGV[i + 1])
      if left > 0 then
        redis.call("HSET", KEYS[1], ARGV[i], '{"q":' .. left .. rest)
      else
        redis.call("HDEL", KEYS[1], ARGV[i])
      end
    end
  end
end
local fields = redis.call("HGETALL", KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == "done:" and now - tonumber(fields[i + 1]) > keep then
    redis.call("HDEL", KEYS[1], fields[i])
  end
end
redis.call("HSET", KEYS[1], ARGV[1], now)
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[4]))
return 1
