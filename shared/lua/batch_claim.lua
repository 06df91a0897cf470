-- Claim up to `count` batches past their time (keys.active_batches) for one API process to expire: each one's
-- score is pushed back to the end of a lease, so that no other process takes it meanwhile, and another one does
-- should this one die before it is done (it removes the batch then).
-- KEYS: the batches that may expire.  ARGV: now_ms, lease end (ms), count.
-- Returns the members claimed.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], member)
end
return due
