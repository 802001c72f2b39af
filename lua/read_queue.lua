-- read_queue.lua: advance a sale's waiting room, then read one buyer's ticket.
-- (Loaded after room_advance.lua, which declares KEYS and the answer.)
--
-- ARGV[1] user_id
-- Returns {"no_room"} or the answer of room_advance.lua tagged "read".

if redis.call("EXISTS", KEYS[1]) == 0 then
  return {"no_room"}
end
local now = now_ms()
local s = advance(now)
return answer("read", ARGV[1], now, s)
