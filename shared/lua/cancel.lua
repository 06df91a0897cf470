-- Cancel a job that has not finished. KEYS: job record, stream, queue, arq job definition, running set.
-- ARGV: now_ms, result ttl s, stream ttl s, key id, cancel channel.
-- Returns 'ok', the job's status when it had already finished, or false when the job is unknown.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'queued' and status ~= 'running' then return status end
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
if status == 'running' then
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'request')
redis.call('XADD', KEYS[2], '*', 't', 'done', 'd', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 'ok'
