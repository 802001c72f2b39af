-- prelude.lua: helpers every script of lua/ shares; engine/scripts.py puts this text in
-- front of each script when it loads it (Redis runs each script alone, so sharing code
-- means sending it along). Only local functions: no key is touched here.
--
-- A reservation record, the value of a sale's `res` hash (engine/records.py reads and
-- writes the same format):
--   "<user_id>:<quantity>:<state>:<expires_ms>:<order_id>"
--   state h=held c=confirmed r=released e=expired; order_id empty until confirmed.

-- The Redis clock, one for every gateway: milliseconds, and microseconds.
local function clock()
  local t = redis.call("TIME")
  local seconds, micros = tonumber(t[1]), tonumber(t[2])
  return seconds * 1000 + math.floor(micros / 1000), seconds * 1000000 + micros
end

local function now_ms()
  return (clock())
end

-- user, quantity, state, expires_ms, order_id: all text, as stored.
local function parse_record(rec)
  return string.match(rec, "^([^:]*):([^:]*):([^:]*):([^:]*):(.*)$")
end

local function format_record(user, qty, state, expires, order)
  return user .. ":" .. qty .. ":" .. state .. ":" .. expires .. ":" .. order
end

