-- Erase the finished jobs whose time is up (RESULT_TTL after their end), index entries included.
-- KEYS: the set of expiring jobs.
-- ARGV: now_ms, at most how many, the key prefixes of records, streams, clients' job indexes and models' activity
--       streams.
-- Returns how many entries were due, at most the limit: the caller calls again while it reaches the limit.
--#include forget
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, kid in ipairs(due) do
  -- A job retried since it ended has left this set (submit.lua); one that runs again is not erased.
  forget(kid, ARGV[3], ARGV[4], ARGV[5], KEYS[1], ARGV[6])
  redis.call('ZREM', KEYS[1], kid)
end
return #due
