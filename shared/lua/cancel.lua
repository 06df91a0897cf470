-- Cancel a job that has not finished.
-- KEYS: job record, stream, model's queue, model's running set.
-- ARGV: now_ms, result ttl s, stream ttl s, key id, cancel channel, arq job definition key prefix, the key
--       prefixes of clients' unfinished jobs, of their daily token counts and of their queues on the model, the
--       model's virtual finish tags, the prefix of clients' job indexes, the set of expiring jobs, the stream of
--       webhook events, the record's own TTL (s: RESULT_TTL and the reaper's grace).
-- The job keeps its request, for a retry (POST /v1/jobs/{id}/retry), unless it belongs to a batch.
-- A queued job gives back the tokens reserved at its submission, and its client's place in the fair queue; a
-- running one keeps them (its use is unknown).
-- Returns 'ok', the job's status when it had already finished, or false when the job is unknown.
--#include batch_end
--#include settle
--#include index
--#include attempt_log
local job = redis.call('HMGET', KEYS[1], 'status', 'arq', 'cost', 'day', 'weight', 'batch', 'id', 'model', 'index',
  'rank', 'webhook')
local status, arq_id, batch = job[1], job[2], job[6]
if not status then return false end
if status ~= 'queued' and status ~= 'running' then return status end
redis.call('ZREM', KEYS[3], arq_id)
redis.call('DEL', ARGV[6] .. arq_id)
if status == 'running' then
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
local owner = string.match(ARGV[4], '^([^:]*):')
redis.call('ZREM', ARGV[7] .. owner, ARGV[4])
redis.call('ZREM', ARGV[9] .. owner, arq_id)
if status == 'queued' and job[3] then
  settle(owner, {job[3], job[4], job[5], job[6]}, -tonumber(job[3]), ARGV[8], ARGV[10])
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
if batch then redis.call('HDEL', KEYS[1], 'request') end -- a batch's jobs are not retried one by one
redis.call('XADD', KEYS[2], '*', 't', 'done', 'd', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[14])
redis.call('EXPIRE', KEYS[2], ARGV[3])
index_move(index_scopes(ARGV[11], owner, job[8], job[9]), job[7], status, 'cancelled', job[10])
redis.call('ZADD', ARGV[12], tonumber(ARGV[1]) + tonumber(ARGV[2]) * 1000, ARGV[4])
webhook_event(job[11], ARGV[13], ARGV[4], 'cancelled', ARGV[1])
-- A job of a batch counts in its batch's counters; the batch ends with its last job.
if batch then
  redis.call('HINCRBY', batch, 'cancelled', 1)
  end_batch_when_done(batch, ARGV[1], ARGV[2])
end
return 'ok'
