-- A worker takes a job: queued becomes running.
-- KEYS: job record, stream, model's running set, model's queue.
-- ARGV: now_ms, worker id, heartbeat deadline ms, key id, arq job id, the prefix of clients' job indexes.
-- The job's place in the queue (its arq job's score) is kept in the record, for when it is handed back.
-- Returns false when the job must not run (running already, cancelled, finished, expired, or handed back
-- or replaced since this arq job was queued), else {attempt, run, request, created_at}. `attempts` is the
-- public count (a shutdown gives its attempt back); `run` only grows: it fences every later write, so a
-- worker that lost the job can no longer touch it. A running job whose worker died is not taken here:
-- the sweeper hands it back under a new arq job id (requeue.lua).
--#include index
local state = redis.call('HMGET', KEYS[1], 'status', 'request', 'arq', 'created_at', 'id', 'model', 'index', 'rank')
if state[1] ~= 'queued' or state[3] ~= ARGV[5] then return false end
index_move(index_scopes(ARGV[6], string.match(ARGV[4], '^([^:]*):'), state[6], state[7]), state[5], 'queued',
  'running', state[8])
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local run = redis.call('HINCRBY', KEYS[1], 'run', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2])
redis.call('HDEL', KEYS[1], 'not_before')
local place = redis.call('ZSCORE', KEYS[4], ARGV[5])
if place then redis.call('HSET', KEYS[1], 'place', place) end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- an earlier run wrote tokens: subscribers must drop them
  redis.call('XADD', KEYS[2], '*', 't', 'reset', 'd', attempt)
end
return {attempt, run, state[2], state[4]}
