-- Record the end of an attempt: succeeded (with its result) or failed (with its error).
-- KEYS: job record, stream, model's running set, model's activity stream (for the dashboard).
-- ARGV: run, status, field ('result' or 'error'), JSON payload, now_ms, result ttl s, stream ttl s,
--       key id, final text chunk ('' for none), activity stream length, tokens used (prompt + generated; 0 for
--       a failure), the key prefixes of clients' unfinished jobs and of their daily token counts, the model's
--       virtual finish tags, the model's queue (the job leaves it here rather than when arq ends its task: queue
--       positions are counted from it).
-- The tokens reserved at submission (the record's `cost`, on its `day`) are settled with the tokens used, and so
-- is the client's finish tag in the model's fair queue.
-- Returns 1 (also when this run already recorded this outcome: a call resent after its reply was lost),
-- or 0 when the run no longer owns the job (then nothing is written).
--#include batch_end

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

local state = redis.call('HMGET', KEYS[1], 'status', 'run')
if state[1] == ARGV[2] and state[2] == ARGV[1] then return 1 end
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
redis.call('ZREM', ARGV[15], redis.call('HGET', KEYS[1], 'arq'))
local owner = string.match(ARGV[8], '^([^:]*):')
redis.call('ZREM', ARGV[12] .. owner, ARGV[8])
local reserved = redis.call('HMGET', KEYS[1], 'cost', 'day', 'weight', 'batch')
if reserved[1] and reserved[2] then
  local delta = tonumber(ARGV[11]) - tonumber(reserved[1])
  local day_key = ARGV[13] .. owner .. ':' .. reserved[2]
  if delta ~= 0 and redis.call('EXISTS', day_key) == 1 then redis.call('INCRBY', day_key, delta) end
  if delta ~= 0 and reserved[3] then
    -- The client's share is counted in the tokens the job used, not in its estimate (submit.lua).
    local field = (reserved[4] and 'batch:' or 'interactive:') .. owner
    redis.call('HINCRBYFLOAT', ARGV[14], field, delta / tonumber(reserved[3]))
  end
end
local times = redis.call('HMGET', KEYS[1], 'created_at', 'started_at', 'id', 'attempts')
local fact = {'s', ARGV[2], 'j', times[3] or '', 'a', times[4] or '0',
              'q', tonumber(times[2] or ARGV[5]) - tonumber(times[1] or ARGV[5]),
              'd', tonumber(ARGV[5]) - tonumber(times[2] or ARGV[5])}
if ARGV[3] == 'error' then
  local error = cjson.decode(ARGV[4])
  fact[#fact + 1], fact[#fact + 2] = 'e', error['type'] .. ': ' .. utf8_prefix(error['message'], 300)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', unpack(fact))
-- A job of a batch counts in its batch's counters; the batch ends with its last job.
local batch = redis.call('HGET', KEYS[1], 'batch')
if batch then
  redis.call('HINCRBY', batch, ARGV[2] == 'succeeded' and 'completed' or 'failed', 1)
  end_batch_when_done(batch, ARGV[5], ARGV[6])
end
return 1
