-- benchmarks/baseline: lua/load_tokens.lua as it was before the lean gate (issue 13): the
-- loader of the layout reserve_before.lua reads. Not used by the application.
--
-- load_tokens.lua: create a sale's Redis state and load its tokens, once.
--
-- KEYS[1] meta  KEYS[2] tokens  KEYS[3] events  (layouts as in reserve.lua)
-- ARGV[1] product_id  ARGV[2] price (text)  ARGV[3] starts_ms  ARGV[4] ends_ms (0 = open)
-- ARGV[5] per_user_limit  ARGV[6] hold_ms  ARGV[7] quantity (tokens to load)
-- ARGV[8] initial (the sale's quantity; larger than ARGV[7] when recovering a sale whose
--         held and sold units are already accounted for)
-- ARGV[9] units already held   ARGV[10] units already confirmed   (0 and 0 for a new sale)
-- ARGV[11] the sale's identity in Postgres (its creation time in microseconds): the same
--          sale id from another database (a recreated one) is a different sale
--
-- Returns {"ok", tokens}; {"exists", tokens_now} when this very sale is loaded already (a
-- sale's tokens are never loaded twice); {"foreign"} when Redis holds another sale under
-- this id.

if redis.call("EXISTS", KEYS[1]) == 1 then
  if redis.call("HGET", KEYS[1], "identity") ~= ARGV[11] then
    return {"foreign"}
  end
  return {"exists", tonumber(redis.call("GET", KEYS[2]) or "0")}
end
local now = now_ms()
redis.call("HSET", KEYS[1], "product_id", ARGV[1], "price", ARGV[2], "starts_ms", ARGV[3],
  "ends_ms", ARGV[4], "per_user_limit", ARGV[5], "hold_ms", ARGV[6], "initial", ARGV[8],
  "held", ARGV[9], "confirmed", ARGV[10], "state", "ready", "loaded_ms", now,
  "identity", ARGV[11])
redis.call("SET", KEYS[2], ARGV[7])
redis.call("XADD", KEYS[3], "*", "t", "loaded", "q", ARGV[7], "ts", now)
return {"ok", tonumber(ARGV[7])}
