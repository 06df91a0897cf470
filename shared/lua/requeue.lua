-- Give running jobs back to their model's queue, each under a fresh arq job id, and wake the model's workers.
-- Two uses: a worker hands back its own run (a retry after a transient failure, or a shutdown), fenced by
-- the run; the sweeper hands back runs whose heartbeat deadline passed (their worker died), fenced by it.
-- The fresh id (a new queue entry; the old entry, definition, in-progress and retry keys deleted) means
-- that whatever arq still does with the old id, such as the late bookkeeping of a worker presumed dead
-- that was only slow, can never touch the job's new entry; and no in-progress key delays the next run.
-- KEYS: model's running set, model's queue, then the record of each job.
-- ARGV: mode ('run' or 'expired'), now_ms, refund (1: the attempt does not count), not before (ms; '0': at once):
--       the job keeps the place start.lua noted (its fair-share tag, ahead of batch jobs for an interactive one)
--       but no worker takes it before then (take.lua), arq key prefixes (job definition, in-progress, retry),
--       wake channel, the prefix of the model's client queues, the end of the interactive band (where batch jobs
--       begin), then per job: key id, run (mode 'run'), new arq id.
-- An interactive job goes back to its client's queue too, first: it had its turn already (take.lua).
--       The new arq job's definition is written by the worker that takes it (take.lua, for worker/arq_adapter.py).
-- Returns the key ids handed back: the others are no longer running under that run or deadline.
local mode, now, refund, not_before = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local job_prefix, progress_prefix, retry_prefix, channel = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local client_queue_prefix, boundary, index_prefix = ARGV[9], tonumber(ARGV[10]), ARGV[11]
--#include index
--#include attempt_log
local done = {}
for i = 3, #KEYS do
  local p = 12 + 4 * (i - 3)
  local kid, run, arq_id = ARGV[p], ARGV[p + 1], ARGV[p + 2]
  local state = redis.call('HMGET', KEYS[i], 'status', 'run', 'arq', 'place', 'id', 'model', 'index', 'rank')
  local owned
  if mode == 'run' then
    owned = state[1] == 'running' and state[2] == run
  else
    local deadline = redis.call('ZSCORE', KEYS[1], kid)
    owned = state[1] == 'running' and deadline and tonumber(deadline) <= now
    if state[1] ~= 'running' then redis.call('ZREM', KEYS[1], kid) end
  end
  if owned then
    if refund == '1' then redis.call('HINCRBY', KEYS[i], 'attempts', -1) end
    local old = state[3]
    local place = state[4] or now
    redis.call('ZREM', KEYS[1], kid)
    redis.call('ZREM', KEYS[2], old)
    redis.call('DEL', job_prefix .. old, progress_prefix .. old, retry_prefix .. old)
    redis.call('ZADD', KEYS[2], place, arq_id)
    if tonumber(place) < boundary then
      local owner = string.match(kid, '^([^:]*):')
      redis.call('ZREM', client_queue_prefix .. owner, old)
      redis.call('ZADD', client_queue_prefix .. owner, 'NX', -1e300, arq_id)
    end
    redis.call('HSET', KEYS[i], 'status', 'queued', 'arq', arq_id)
    index_move(index_scopes(index_prefix, string.match(kid, '^([^:]*):'), state[6], state[7]), state[5], 'running',
      'queued', state[8])
    append_attempt(KEYS[i], ARGV[p + 3])
    if not_before ~= '0' then redis.call('HSET', KEYS[i], 'not_before', not_before) end
    done[#done + 1] = kid
  end
end
if #done > 0 then redis.call('PUBLISH', channel, '1') end
return done
