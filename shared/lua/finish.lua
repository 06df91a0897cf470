-- Record the end of an attempt: succeeded (with its result) or failed (with its error).
-- KEYS: job record, stream, model's running set.
-- ARGV: run, status, field ('result' or 'error'), JSON payload, now_ms, result ttl s, stream ttl s,
--       key id, final text chunk ('' for none).
-- Returns 1, or 0 when the run no longer owns the job (then nothing is written).
local state = redis.call('HMGET', KEYS[1], 'status', 'run')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return 0 end
if ARGV[9] ~= '' then
  redis.call('XADD', KEYS[2], '*', 't', 'token', 'd', ARGV[9])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4], 'finished_at', ARGV[5])
redis.call('HDEL', KEYS[1], 'request')
redis.call('XADD', KEYS[2], '*', 't', 'done', 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[8])
return 1
