-- move_out.lua: the first step of moving tokens between two buckets of one sale
-- (engine/buckets.py): take up to N tokens from this bucket and record the transfer.
--
-- KEYS[1] meta  (layout as in reserve.lua: "tokens" are the units left; the meta also
--         keeps "moved_out", units this bucket ever sent, and "move_seq")
-- KEYS[2] moves_out  hash: transfer id -> "<to bucket>:<units>", until the transfer is done
-- ARGV[1] this bucket's number   ARGV[2] the recipient bucket's number
-- ARGV[3] N, the most units to move
--
-- Returns {transfer_id, units} with units = min(N, tokens) (0 and "" when the bucket has
-- none, or no such sale). The units are in no bucket's tokens until move_in.lua credits
-- them: the books count them in transit, as moved_out here and not yet moved_in there.
-- Transfer ids are "<from bucket>-<n>", n = max(last n + 1, Redis clock in microseconds),
-- never reissued (the argument of engine/keys.py for reservation ids).

local want = tonumber(ARGV[3])
local meta = redis.call("HMGET", KEYS[1], "tokens", "moved_out", "move_seq")
if not meta[1] or want < 1 then
  return {"", 0}
end
local have = tonumber(meta[1])
local units = math.min(want, have)
if units < 1 then
  return {"", 0}
end
local _, now_us = clock()
local n = string.format("%d", math.max(tonumber(meta[3] or "0") + 1, now_us))
local tid = ARGV[1] .. "-" .. n
redis.call("HSET", KEYS[1], "tokens", have - units,
  "moved_out", tonumber(meta[2] or "0") + units, "move_seq", n)
redis.call("HSET", KEYS[2], tid, ARGV[2] .. ":" .. units)
return {tid, units}
