-- Put a running job back in the queue: a transient failure to retry, or a worker shutting down.
-- KEYS: job record, model's running set.  ARGV: run, key id, refund (1: the attempt does not count).
-- Returns 1, or 0 when the run no longer owns the job.
local state = redis.call('HMGET', KEYS[1], 'status', 'run')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
