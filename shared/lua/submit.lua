-- Store and queue a list of jobs of one client in one round trip, all or nothing.
-- KEYS: the record of each job; its other keys are named from the prefixes below.
-- ARGV: now_ms, max queue depth of the model (0: none), the range of queue scores that depth counts (ZCOUNT's min
--       and max: the band of the jobs' tier, see shared/store.py), owner, mode ('keep': another body under a
--       job's id is a conflict; 'replace': it replaces the job), tier ('interactive' or 'batch'), the tier's band
--       (the score of virtual time 0), the client's weight, max_queued_jobs (0: none; interactive jobs only),
--       max_running_jobs (kept for take.lua), tokens_per_day (0: none), the day's token key, its TTL (s), the day
--       (YYYYMMDD), the key prefixes of records, queues, running sets, streams, arq job definitions, cancel
--       channels, wake channels, virtual clocks, virtual finish tags and clients' queues (model and owner follow),
--       the step between priorities in a client's queue, the client's hash and its set of unfinished jobs, its
--       max_stored_bytes (0: none), its stored bytes (keys.stored), until when the jobs' metadata is charged (ms;
--       interactive jobs only: a batch is charged its input), the number n of extra fields stored in every
--       record, their n field/value pairs, the prefix of clients' job indexes, the set of expiring jobs, the
--       client's webhook signing secret ('' when no job has a webhook),
--       then 11 per job: key id, arq job id, model, fingerprint, request, metadata ('' for none), cost (tokens),
--       priority, the job's extra index scopes (index.lua; '' for none), its webhook (JSON, '' for none), its
--       template tag ('' for none).
-- Mode 'retry' (POST /v1/jobs/{id}/retry) runs a failed or cancelled job again under its id: its record is
-- written anew but keeps its creation time, rank, metadata and attempt log; attempts start again from 0 and its
-- stream starts again with a `reset` event. A job in another state, or of a batch, is not retried: {"state", key
-- id, status}.
-- Fair share: a job's score is its tier's band plus its start tag (start-time fair queuing): the later of the
-- model's virtual clock (the tag of the last job taken) and the client's finish tag, which then grows by the
-- job's cost over the client's weight (finish.lua corrects it with the tokens the job really used). Workers take
-- the lowest scores first: while several clients have jobs queued, each gets tokens in proportion to its
-- weight; a client alone gets everything.
-- The arq job definition is not written here: the worker that takes the job writes it (take.lua).
-- A job's rank (its score in its indexes) is its creation time in ms × 1024 plus its place in the submission.
-- The jobs of a batch (an extra field `batch`: its key) join it only while it is validating: once it is cancelling
-- or finalizing (batch.lua), nothing is stored, {"closed", its status}.
-- Returns {"conflict", key id} | {"closed", status} | {"full", queue, depth, asked} | {"quota", limit, value, usage, asked[, when the
-- earliest stored bytes stop counting (ms), for max_stored_bytes]}
-- | {"ok", r1, r2, ...}: ri is 0 for a stored job and the flat HGETALL of the existing record for an identical
-- resubmission.
local now, max_depth, depth_min, depth_max = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local owner, mode, tier, band, weight = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local max_queued, max_running = tonumber(ARGV[10]), ARGV[11]
local tokens_limit, tokens_key, tokens_ttl, day = tonumber(ARGV[12]), ARGV[13], ARGV[14], ARGV[15]
local job_prefix, queue_prefix, running_prefix, stream_prefix = ARGV[16], ARGV[17], ARGV[18], ARGV[19]
local arq_prefix, cancel_prefix, wake_prefix = ARGV[20], ARGV[21], ARGV[22]
local clock_prefix, finish_prefix, client_queue_prefix = ARGV[23], ARGV[24], ARGV[25]
local priority_step, client_key, client_jobs = tonumber(ARGV[26]), ARGV[27], ARGV[28]
local max_stored, stored_key, metadata_until = tonumber(ARGV[29]), ARGV[30], ARGV[31]
local index_prefix, expiring, webhook_secret = ARGV[32], ARGV[33], ARGV[34]
local n_extra = tonumber(ARGV[35])
local extra = {unpack(ARGV, 36, 35 + 2 * n_extra)}
local first, PER_JOB = 36 + 2 * n_extra, 11
for j = 1, #extra, 2 do
  if extra[j] == 'batch' then
    local batch_status = redis.call('HGET', extra[j + 1], 'status')
    if batch_status ~= 'validating' then return {'closed', batch_status or false} end
  end
end
local RANK_SLOTS = 1024
--#include stored_buckets
--#include index
local SLICE = 4000 -- values a call: Lua's unpack takes at most 8,000
local HEAL_EVERY_MS = 10000

local function any_exists(names)
  for from = 1, #names, SLICE do
    if redis.call('EXISTS', unpack(names, from, math.min(from + SLICE - 1, #names))) > 0 then return true end
  end
  return false
end

-- existing[i]: nil for a new job, true for an identical resubmission, false for a job to replace.
-- One EXISTS tells the usual case, where no record exists, without a look at each.
local existing = {}
if mode == 'retry' then
  local old = redis.call('HMGET', KEYS[1], 'status', 'batch')
  if (old[1] ~= 'failed' and old[1] ~= 'cancelled') or old[2] then
    return {'state', ARGV[first], old[2] and 'batch' or old[1] or false}
  end
  existing[1] = false
elseif any_exists(KEYS) then
  for i = 1, #KEYS do
    local p = first + PER_JOB * (i - 1)
    local hash = redis.call('HGET', KEYS[i], 'hash')
    if hash then
      if hash ~= ARGV[p + 3] and mode ~= 'replace' then return {'conflict', ARGV[p]} end
      existing[i] = hash == ARGV[p + 3]
    end
  end
end

local fresh, n_fresh, cost, metadata_bytes = {}, 0, 0, 0
for i = 1, #KEYS do
  if not existing[i] then
    local p = first + PER_JOB * (i - 1)
    fresh[ARGV[p + 2]] = (fresh[ARGV[p + 2]] or 0) + 1
    n_fresh = n_fresh + 1
    cost = cost + tonumber(ARGV[p + 6])
    if tier == 'interactive' then metadata_bytes = metadata_bytes + #ARGV[p + 5] end -- a batch's input pays for its
  end
end

if max_depth > 0 then
  -- Only the jobs of this submission's tier: a batch larger than MAX_QUEUE_DEPTH must not shut out
  -- interactive jobs, nor interactive jobs a batch. O(log n) a model, whatever the queue holds.
  for model, n in pairs(fresh) do
    local depth = redis.call('ZCOUNT', queue_prefix .. model, depth_min, depth_max)
    if depth + n > max_depth then return {'full', queue_prefix .. model, depth, n} end
  end
end

if max_queued > 0 and n_fresh > 0 then
  local pending = redis.call('ZCARD', client_jobs)
  if pending + n_fresh > max_queued and
      tonumber(redis.call('HGET', client_key, 'healed') or '0') < tonumber(now) - HEAL_EVERY_MS then
    -- Drop members whose job ended without saying so (a record lost with a Redis restart): checked at most
    -- every HEAL_EVERY_MS, so that a client at its limit cannot make Redis walk its set at every request.
    redis.call('HSET', client_key, 'healed', now)
    for _, kid in ipairs(redis.call('ZRANGE', client_jobs, 0, -1)) do
      local status = redis.call('HGET', job_prefix .. kid, 'status')
      if status ~= 'queued' and status ~= 'running' then redis.call('ZREM', client_jobs, kid) end
    end
    pending = redis.call('ZCARD', client_jobs)
  end
  if pending + n_fresh > max_queued then return {'quota', 'max_queued_jobs', max_queued, pending, n_fresh} end
end

local used = tonumber(redis.call('GET', tokens_key) or '0')
if tokens_limit > 0 and cost > 0 and used + cost > tokens_limit then
  return {'quota', 'tokens_per_day', tokens_limit, used, cost}
end

if metadata_bytes > 0 and max_stored > 0 then
  local stored, first_end = stored_usage(stored_key, now)
  if stored + metadata_bytes > max_stored then
    return {'quota', 'max_stored_bytes', max_stored, stored, metadata_bytes, first_end or false}
  end
end

-- Nothing can refuse the submission from here on.
if metadata_bytes > 0 then stored_add(stored_key, now, metadata_until, metadata_bytes) end
if cost > 0 then
  redis.call('INCRBY', tokens_key, cost)
  redis.call('EXPIRE', tokens_key, tokens_ttl)
end
redis.call('HSET', client_key, 'max_running', max_running)
if webhook_secret ~= '' then redis.call('HSET', client_key, 'webhook_secret', webhook_secret) end

-- The virtual clock and the client's finish tag of each model, read once and written back at the end.
local clocks, finishes = {}, {}
local finish_field = tier .. ':' .. owner
local function start_tag(model, job_cost)
  if clocks[model] == nil then
    clocks[model] = tonumber(redis.call('HGET', clock_prefix .. model, tier) or '0')
    finishes[model] = tonumber(redis.call('HGET', finish_prefix .. model, finish_field) or '0')
  end
  local tag = math.max(clocks[model], finishes[model])
  finishes[model] = tag + job_cost / weight
  return tag
end

-- A new record holds no `attempts` nor `run` (0 until start.lua counts them), nor anything its key tells;
-- `...`: the fields it has but not every record (metadata, priority, the extra fields).
local id_from = #owner + 2
local function store_record(i, p, created, rank, ...)
  redis.call('HSET', KEYS[i], 'id', string.sub(ARGV[p], id_from), 'model', ARGV[p + 2], 'status', 'queued',
    'arq', ARGV[p + 1], 'request', ARGV[p + 4], 'hash', ARGV[p + 3], 'created_at', created, 'cost', ARGV[p + 6],
    'weight', ARGV[9], 'day', day, 'rank', rank, ...)
end

-- The client's order of its own interactive jobs: a sequence number each (finish.lua may move the client's finish
-- tag back, when a job used fewer tokens than its cost, so tags do not tell the submission order).
local seq = 0
if tier == 'interactive' and n_fresh > 0 then seq = redis.call('HINCRBY', client_key, 'seq', n_fresh) - n_fresh end

local out, queued, unfinished, best, indexed = {'ok'}, {}, {}, {}, {}
local base_rank = tonumber(now) * RANK_SLOTS
for i = 1, #KEYS do
  local p = first + PER_JOB * (i - 1)
  local kid, arq_id, model, metadata, priority = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 5], ARGV[p + 7]
  local job_id = string.sub(kid, id_from)
  if existing[i] then
    out[i + 1] = redis.call('HGETALL', KEYS[i])
  else
    local run, created, rank, log = 0, now, string.format('%.0f', base_rank + (i - 1) % RANK_SLOTS), false
    if existing[i] == false then
      -- Stop the old generation (a replacement); its worker loses the job (fenced by `run`), its stream gets a reset.
      local old = redis.call('HMGET', KEYS[i], 'status', 'arq', 'model', 'run', 'index', 'created_at', 'rank',
        'attempt_log')
      if old[1] == 'queued' or old[1] == 'running' then
        redis.call('ZREM', queue_prefix .. old[3], old[2])
        redis.call('ZREM', client_queue_prefix .. old[3] .. ':' .. owner, old[2])
        redis.call('DEL', arq_prefix .. old[2])
        if old[1] == 'running' then
          redis.call('ZREM', running_prefix .. old[3], kid)
          redis.call('PUBLISH', cancel_prefix .. old[3], kid)
        end
      end
      index_move(index_scopes(index_prefix, owner, old[3], old[5]), job_id, old[1], false)
      redis.call('ZREM', expiring, kid)
      run = tonumber(old[4] or '0')
      redis.call('DEL', KEYS[i])
      if mode == 'retry' then
        created, rank, log = old[6], old[7] or rank, old[8]
        redis.call('DEL', stream_prefix .. kid)
        redis.call('XADD', stream_prefix .. kid, '*', 't', 'reset', 'd', '0')
      else
        redis.call('PERSIST', stream_prefix .. kid)
      end
    end
    local fields = {}
    local function field(name, value)
      if value and value ~= '' then fields[#fields + 1], fields[#fields + 2] = name, value end
    end
    field('metadata', metadata)
    if priority ~= '0' then field('priority', priority) end
    field('index', ARGV[p + 8])
    field('webhook', ARGV[p + 9])
    field('template', ARGV[p + 10])
    field('attempt_log', log)
    for j = 1, #extra do fields[#fields + 1] = extra[j] end
    store_record(i, p, created, rank, unpack(fields))
    for _, scope in ipairs(index_scopes(index_prefix, owner, model, ARGV[p + 8])) do
      local members = indexed[scope] or {}
      indexed[scope] = members
      members[#members + 1] = rank
      members[#members + 1] = job_id
    end
    -- The fence only grows: the replaced generation's worker must not write into the new one.
    if run > 0 then redis.call('HSET', KEYS[i], 'run', run) end
    local tag = start_tag(model, tonumber(ARGV[p + 6]))
    local members = queued[model] or {}
    queued[model] = members
    members[#members + 1] = band + tag
    members[#members + 1] = arq_id
    if tier == 'interactive' then
      unfinished[#unfinished + 1] = now
      unfinished[#unfinished + 1] = kid
      -- Higher priorities first, then the submission order.
      seq = seq + 1
      local mine = best[model] or {}
      best[model] = mine
      mine[#mine + 1] = seq - tonumber(priority) * priority_step
      mine[#mine + 1] = arq_id
    end
    out[i + 1] = 0
  end
end
-- One ZADD a model (a slice at a time), then its workers are woken.
for model, members in pairs(queued) do
  for from = 1, #members, SLICE do
    redis.call('ZADD', queue_prefix .. model, unpack(members, from, math.min(from + SLICE - 1, #members)))
  end
  redis.call('HSET', finish_prefix .. model, finish_field, finishes[model])
  redis.call('PUBLISH', wake_prefix .. model, '1')
end
for model, members in pairs(best) do
  local mine = client_queue_prefix .. model .. ':' .. owner
  for from = 1, #members, SLICE do
    redis.call('ZADD', mine, unpack(members, from, math.min(from + SLICE - 1, #members)))
  end
end
for scope, members in pairs(indexed) do
  for from = 1, #members, SLICE do
    redis.call('ZADD', scope .. 'queued', unpack(members, from, math.min(from + SLICE - 1, #members)))
  end
end
for from = 1, #unfinished, SLICE do
  redis.call('ZADD', client_jobs, unpack(unfinished, from, math.min(from + SLICE - 1, #unfinished)))
end
return out
