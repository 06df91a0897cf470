-- A worker's periodic heartbeat: itself, and the deadline of each job it runs.
-- KEYS: workers set, running set, then the record of each running job.
-- ARGV: now_ms, worker id, job deadline ms, arq in-progress key prefix, its lease ms, then the key id and
--       run of each running job (same order).
-- arq's in-progress key of each job is kept alive too: arq only sets it for that lease when it takes a
-- job, so that a job taken by a worker that died before starting it is taken again soon.
-- Returns the key ids this worker must stop: their record no longer says running under its run.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - 3600000)
local stale = {}
for i = 3, #KEYS do
  local kid, run = ARGV[2 * i], ARGV[2 * i + 1]
  local state = redis.call('HMGET', KEYS[i], 'status', 'run', 'arq')
  if state[1] == 'running' and state[2] == run then
    redis.call('ZADD', KEYS[2], 'XX', ARGV[3], kid)
    redis.call('PEXPIRE', ARGV[4] .. state[3], ARGV[5])
  else
    stale[#stale + 1] = kid
  end
end
return stale
