-- store_standing.lua: publish a user's standing (role, token version), never an older one.
--
-- KEYS[1] account hash: role -> text ("" = no such user), ver -> integer
-- ARGV[1] role   ARGV[2] token version   ARGV[3] TTL (seconds)
--
-- Returns 1 when stored, 0 when the hash already holds this version or a newer one (a
-- reader's fill from Postgres that raced a change, or two changes arriving out of order).

local stored = redis.call("HGET", KEYS[1], "ver")
if stored and tonumber(stored) >= tonumber(ARGV[2]) then
  return 0
end
redis.call("HSET", KEYS[1], "role", ARGV[1], "ver", ARGV[2])
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[3]))
return 1
