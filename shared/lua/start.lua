-- A worker takes a job: queued (or running, when its previous worker vanished) becomes running.
-- KEYS: job record, stream, model's running set.  ARGV: now_ms, worker id, heartbeat deadline ms, key id.
-- Returns false when the job must not run (cancelled, finished, expired), else {attempt, request}.
local state = redis.call('HMGET', KEYS[1], 'status', 'request')
if state[1] ~= 'queued' and state[1] ~= 'running' then return false end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if attempt > 1 then
  redis.call('XADD', KEYS[2], '*', 't', 'reset', 'd', attempt)
end
return {attempt, state[2]}
