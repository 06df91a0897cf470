-- Record the end of an attempt: succeeded (with its result) or failed (with its error).
-- KEYS: job record, stream, model's running set, model's activity stream (for the dashboard).
-- ARGV: run, status, field ('result' or 'error'), JSON payload, now_ms, result ttl s, stream ttl s,
--       key id, final text chunk ('' for none), activity stream length, tokens used (prompt + generated; 0 for
--       a failure), the key prefixes of clients' unfinished jobs and of their daily token counts, the model's
--       virtual finish tags, the model's queue (the job leaves it here rather than when arq ends its task: queue
--       positions are counted from it), the provenance of the answer (JSON, '' for none), the attempt's line of
--       the record's `attempt_log` (JSON, '' for none), the prefix of clients' job indexes, the set of expiring
--       jobs, the stream of webhook events, the record's own TTL (s: RESULT_TTL and the reaper's grace), the key
--       prefixes of arq's job definitions, in-progress keys and try counts: the job's are deleted here, so that
--       arq's own bookkeeping after the run is skipped (worker/arq_adapter.py).
-- The job moves to its end status in its indexes and joins the expiring jobs, which the reaper erases RESULT_TTL
-- after the end (reap.lua). A failed job keeps its request, for a retry; a succeeded one, or a batch's, drops it.
-- The tokens reserved at submission (the record's `cost`, on its `day`) are settled with the tokens used, and so
-- is the client's finish tag in the model's fair queue.
-- Returns 1 (also when this run already recorded this outcome: a call resent after its reply was lost),
-- or 0 when the run no longer owns the job (then nothing is written).
--#include batch_end
--#include settle
--#include index
--#include attempt_log

-- The first bytes of UTF-8 `text`, at most `limit`, cut on a character boundary: a cut before a continuation
-- byte (0x80-0xBF) moves back to its character's first byte. Readers decode the activity stream as UTF-8.
local function utf8_prefix(text, limit)
  if #text <= limit then return text end
  local cut = limit
  while cut > 0 do
    local next_byte = string.byte(text, cut + 1)
    if next_byte < 0x80 or next_byte > 0xBF then break end
    cut = cut - 1
  end
  return string.sub(text, 1, cut)
end

-- The record, read once: its state, queue entry, reservation (settle.lua), times and batch.
local job = redis.call('HMGET', KEYS[1], 'status', 'run', 'arq', 'cost', 'day', 'weight', 'batch', 'created_at',
  'started_at', 'id', 'attempts', 'model', 'index', 'rank', 'webhook')
if job[1] == ARGV[2] and job[2] == ARGV[1] then return 1 end
if job[1] ~= 'running' or job[2] ~= ARGV[1] then return 0 end
if ARGV[9] ~= '' then
  redis.call('XADD', KEYS[2], '*', 't', 'token', 'd', ARGV[9])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4], 'finished_at', ARGV[5])
if ARGV[2] == 'succeeded' or job[7] then redis.call('HDEL', KEYS[1], 'request') end
if ARGV[16] ~= '' then redis.call('HSET', KEYS[1], 'provenance', ARGV[16]) end
append_attempt(KEYS[1], ARGV[17])
redis.call('XADD', KEYS[2], '*', 't', 'done', 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[21])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[8])
redis.call('ZREM', ARGV[15], job[3])
redis.call('DEL', ARGV[22] .. job[3], ARGV[23] .. job[3], ARGV[24] .. job[3])
local owner = string.match(ARGV[8], '^([^:]*):')
index_move(index_scopes(ARGV[18], owner, job[12], job[13]), job[10], 'running', ARGV[2], job[14])
redis.call('ZADD', ARGV[19], tonumber(ARGV[5]) + tonumber(ARGV[6]) * 1000, ARGV[8])
webhook_event(job[15], ARGV[20], ARGV[8], ARGV[2], ARGV[5])
redis.call('ZREM', ARGV[12] .. owner, ARGV[8])
if job[4] then
  settle(owner, {job[4], job[5], job[6], job[7]}, tonumber(ARGV[11]) - tonumber(job[4]), ARGV[13], ARGV[14])
end
local created, started = job[8], job[9]
local fact = {'s', ARGV[2], 'j', job[10] or '', 'a', job[11] or '0',
              'q', tonumber(started or ARGV[5]) - tonumber(created or ARGV[5]),
              'd', tonumber(ARGV[5]) - tonumber(started or ARGV[5])}
if ARGV[3] == 'error' then
  local error = cjson.decode(ARGV[4])
  fact[#fact + 1], fact[#fact + 2] = 'e', error['type'] .. ': ' .. utf8_prefix(error['message'], 300)
end
redis.call('HSET', KEYS[1], 'activity', redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', unpack(fact)))
-- A job of a batch counts in its batch's counters; the batch ends with its last job.
local batch = job[7]
if batch then
  redis.call('HINCRBY', batch, ARGV[2] == 'succeeded' and 'completed' or 'failed', 1)
  end_batch_when_done(batch, ARGV[5], ARGV[6])
end
return 1
