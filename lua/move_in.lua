-- move_in.lua: the second step of a transfer between buckets (move_out.lua is the first):
-- credit its units to this bucket, once per transfer id.
--
-- KEYS[1] meta  (layout as in reserve.lua: "tokens" are the units left; the meta also
--         keeps "moved_in", units this bucket ever received)
-- KEYS[2] moves_in  hash: transfer id -> units, every transfer received
-- ARGV[1] transfer id   ARGV[2] units
-- ARGV[3] channel to PUBLISH this bucket's name on ("" = none): gateway workers drop its
--         sold-out flag (engine/refusals.py)   ARGV[4] this bucket's name
--
-- Returns {"ok", tokens_now}; {"again", tokens_now} when this transfer was credited
-- before (a retry after a crash: nothing changes); {"no_sale"}.

local meta = redis.call("HMGET", KEYS[1], "tokens", "moved_in")
if not meta[1] then
  return {"no_sale"}
end
if redis.call("HEXISTS", KEYS[2], ARGV[1]) == 1 then
  return {"again", tonumber(meta[1])}
end
local units = tonumber(ARGV[2])
local left = tonumber(meta[1]) + units
redis.call("HSET", KEYS[1], "tokens", left, "moved_in", tonumber(meta[2] or "0") + units)
redis.call("HSET", KEYS[2], ARGV[1], units)
if ARGV[3] and ARGV[3] ~= "" then
  redis.call("PUBLISH", ARGV[3], ARGV[4])
end
return {"ok", left}
