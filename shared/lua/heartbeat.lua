-- A worker's periodic heartbeat: itself, and the deadline of each job it runs.
-- KEYS: workers set, running set, then the record of each running job.
-- ARGV: now_ms, worker id, job deadline ms, then the key id of each running job (same order).
-- Returns the key ids whose record no longer says running (cancelled or gone): the worker stops them.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local stale = {}
for i = 3, #KEYS do
  local kid = ARGV[i + 1]
  if redis.call('HGET', KEYS[i], 'status') == 'running' then
    redis.call('ZADD', KEYS[2], 'XX', ARGV[3], kid)
  else
    stale[#stale + 1] = kid
  end
end
return stale
