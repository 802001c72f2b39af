-- change_sale_state.lua: pause, resume or end a flash sale, atomically.
--
-- KEYS[1] meta  (layout as in reserve.lua, tokens a field of it; the meta's state is
--         ready | paused | closed, and reserve.lua admits only while it is "ready")
-- ARGV[1] action: "pause" | "resume" | "end"
-- ARGV[2] channel to PUBLISH the sale id on when a sale resumes ("" = none): gateway
--         workers drop the flag that refuses it while paused (engine/refusals.py)
-- ARGV[3] the bucket's name (the sale id for bucket 0: engine/keys.py); a sale split
--         into buckets runs this on bucket 0 first, then on each other bucket
--
-- The status before the move is derived as the gateway derives it: ended (closed, or past
-- ends_ms), paused, scheduled (before starts_ms), sold_out (no tokens), active.
-- Allowed: pause from scheduled, active, sold_out; resume from paused; end from anything
-- but ended. "end" sets ends_ms to now (and starts_ms to at most now - 1, so the window
-- stays valid); the sweeper closes the sale once its holds are gone and its stream applied.
--
-- Returns (times in milliseconds since the epoch, Redis clock):
--   {"ok", status_before, starts_ms, ends_ms}  {"no_sale"}  {"invalid", status_before}
-- Every check comes before the first write.

local meta = redis.call("HMGET", KEYS[1], "state", "starts_ms", "ends_ms", "tokens")
if not meta[1] then
  return {"no_sale"}
end
local now = now_ms()
local state, starts, ends = meta[1], tonumber(meta[2]), tonumber(meta[3])

local status
if state == "closed" or (ends > 0 and now >= ends) then
  status = "ended"
elseif state == "paused" then
  status = "paused"
elseif now < starts then
  status = "scheduled"
elseif tonumber(meta[4] or "0") <= 0 then
  status = "sold_out"
else
  status = "active"
end

local action = ARGV[1]
if action == "pause" then
  if status == "ended" or status == "paused" then
    return {"invalid", status}
  end
  redis.call("HSET", KEYS[1], "state", "paused")
elseif action == "resume" then
  if status ~= "paused" then
    return {"invalid", status}
  end
  redis.call("HSET", KEYS[1], "state", "ready")
  if ARGV[2] and ARGV[2] ~= "" then
    redis.call("PUBLISH", ARGV[2], ARGV[3])
  end
elseif action == "end" then
  if status == "ended" then
    return {"invalid", status}
  end
  if starts >= now then
    starts = now - 1
  end
  ends = now
  redis.call("HSET", KEYS[1], "starts_ms", starts, "ends_ms", ends)
else
  return redis.error_reply("unknown action " .. tostring(action))
end
return {"ok", status, starts, ends}
