-- A worker takes a job: queued (or running, when its previous worker vanished) becomes running.
-- KEYS: job record, stream, model's running set.
-- ARGV: now_ms, worker id, heartbeat deadline ms, key id, arq job id.
-- Returns false when the job must not run (cancelled, finished, expired, or replaced since this arq job
-- was queued), else {attempt, run, request}. `attempts` is the public count (a shutdown gives its
-- attempt back); `run` only grows: it fences every later write, so a worker that lost the job can no
-- longer touch it.
local state = redis.call('HMGET', KEYS[1], 'status', 'request', 'arq')
if (state[1] ~= 'queued' and state[1] ~= 'running') or state[3] ~= ARGV[5] then return false end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local run = redis.call('HINCRBY', KEYS[1], 'run', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- an earlier run wrote tokens: subscribers must drop them
  redis.call('XADD', KEYS[2], '*', 't', 'reset', 'd', attempt)
end
return {attempt, run, state[2]}
