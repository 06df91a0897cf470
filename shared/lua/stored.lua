-- Charge a client's stored bytes (max_stored_bytes), or give them back, in one step however many buckets it touches.
-- KEYS: the client's stored bytes (keys.stored).  ARGV: now_ms, limit (0: none), then pairs: expires_ms, delta.
-- A positive total is refused when it would take the usage over the limit; a move (total 0) or a release never is.
-- Returns {1, usage afterwards}, or {0, usage, end (ms) of the earliest live bucket or false} when refused: then
-- nothing changed.
--#include stored_buckets
local key, now, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local usage, first_end = stored_usage(key, now)
local total, current = 0, stored_bucket(now)
for i = 3, #ARGV, 2 do
  if stored_bucket(ARGV[i]) >= current then total = total + tonumber(ARGV[i + 1]) end
end
if total > 0 and limit > 0 and usage + total > limit then
  return {0, usage, first_end or false}
end
for i = 3, #ARGV, 2 do
  stored_add(key, now, ARGV[i], ARGV[i + 1])
end
return {1, usage + total}
