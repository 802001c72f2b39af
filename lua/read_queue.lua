-- read_queue.lua: advance a sale's waiting room, then read one buyer's ticket.
-- (Loaded after room_advance.lua, which declares KEYS and the answer.)
--
-- ARGV[1] user_id   ARGV[2], ARGV[3] tokens and held units in the sale's other buckets
-- (absent or 0 for a sale of one bucket; room_advance.lua)
-- Returns {"no_room"} or the answer of room_advance.lua tagged "read".

if redis.call("EXISTS", KEYS[1]) == 0 then
  return {"no_room"}
end
others.tokens, others.held = tonumber(ARGV[2] or "0"), tonumber(ARGV[3] or "0")
local now = now_ms()
local s = advance(now)
return answer("read", ARGV[1], now, s)
