-- load_tokens.lua: create a sale's Redis state and load its tokens, once.
--
-- KEYS[1] meta  KEYS[2] events  (layouts as in reserve.lua)
-- ARGV[1] product_id  ARGV[2] price (text)  ARGV[3] starts_ms  ARGV[4] ends_ms (0 = open)
-- ARGV[5] per_user_limit  ARGV[6] hold_ms  ARGV[7] quantity (tokens to load)
-- ARGV[8] initial (the sale's quantity; larger than ARGV[7] when recovering a sale whose
--         held and sold units are already accounted for)
-- ARGV[9] units already held   ARGV[10] units already confirmed   (0 and 0 for a new sale)
-- ARGV[11] the sale's identity in Postgres (its creation time in microseconds): the same
--          sale id from another database (a recreated one) is a different sale
-- ARGV[12] seq: the number of the last reservation id issued (absent = 0; `sale recover`
--          passes the highest it knows)
-- ARGV[13] how many buckets the sale is split into (engine/buckets.py; absent = 1). Bucket 0
--          is loaded last, so a sale whose bucket 0 exists has every bucket loaded.
--
-- Returns {"ok", tokens}; {"exists", tokens_now} when this very sale is loaded already (a
-- sale's tokens are never loaded twice); {"foreign"} when Redis holds another sale under
-- this id.

if redis.call("EXISTS", KEYS[1]) == 1 then
  if redis.call("HGET", KEYS[1], "identity") ~= ARGV[11] then
    return {"foreign"}
  end
  return {"exists", tonumber(redis.call("HGET", KEYS[1], "tokens") or "0")}
end
local now = now_ms()
redis.call("HSET", KEYS[1], "product_id", ARGV[1], "price", ARGV[2], "starts_ms", ARGV[3],
  "ends_ms", ARGV[4], "per_user_limit", ARGV[5], "hold_ms", ARGV[6], "initial", ARGV[8],
  "held", ARGV[9], "confirmed", ARGV[10], "state", "ready", "loaded_ms", now,
  "identity", ARGV[11], "tokens", ARGV[7], "seq", ARGV[12] or "0")
if ARGV[13] and ARGV[13] ~= "1" then
  redis.call("HSET", KEYS[1], "buckets", ARGV[13])
end
redis.call("XADD", KEYS[2], "*", "t", "loaded", "q", ARGV[7], "ts", now)
return {"ok", tonumber(ARGV[7])}
