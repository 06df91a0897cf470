-- Store and queue a list of jobs in one round trip, all or nothing.
-- KEYS: the record of each job; its other keys are named from the prefixes below.
-- ARGV: now_ms, max queue depth (0: none), the range of queue scores that depth counts (ZCOUNT's min and
--       max: the band of the jobs' kind, interactive or batch, see shared/store.py), owner, mode ('keep':
--       another body under a job's id is a conflict; 'replace': it replaces the job), the jobs' score in the
--       queue (lower runs first; arq runs a job once its score is in the past), the key prefixes of queues,
--       running sets, streams, arq job definitions, cancel channels and wake channels, the number n of extra
--       fields stored in every record, their n field/value pairs, then 6 per job: key id, arq job id, model,
--       fingerprint, request, metadata ('' for none).
-- The arq job definition is not written here: the worker that takes the job writes it (worker/runner.py).
-- Returns {"conflict", key id} | {"full", queue} | {"ok", r1, r2, ...}: ri is 0 for a stored job and the
-- flat HGETALL of the existing record for an identical resubmission.
local now, max_depth, depth_min, depth_max = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local owner, mode, score = ARGV[5], ARGV[6], ARGV[7]
local queue_prefix, running_prefix, stream_prefix = ARGV[8], ARGV[9], ARGV[10]
local arq_prefix, cancel_prefix, wake_prefix = ARGV[11], ARGV[12], ARGV[13]
local n_extra = tonumber(ARGV[14])
local extra = {unpack(ARGV, 15, 14 + 2 * n_extra)}
local first, PER_JOB = 15 + 2 * n_extra, 6
local SLICE = 4000 -- values a call: Lua's unpack takes at most 8,000

local function any_exists(names)
  for from = 1, #names, SLICE do
    if redis.call('EXISTS', unpack(names, from, math.min(from + SLICE - 1, #names))) > 0 then return true end
  end
  return false
end

-- existing[i]: nil for a new job, true for an identical resubmission, false for a job to replace.
-- One EXISTS tells the usual case, where no record exists, without a look at each.
local existing = {}
if any_exists(KEYS) then
  for i = 1, #KEYS do
    local p = first + PER_JOB * (i - 1)
    local hash = redis.call('HGET', KEYS[i], 'hash')
    if hash then
      if hash ~= ARGV[p + 3] and mode ~= 'replace' then return {'conflict', ARGV[p]} end
      existing[i] = hash == ARGV[p + 3]
    end
  end
end

if max_depth > 0 then
  local fresh = {}
  for i = 1, #KEYS do
    if not existing[i] then
      local model = ARGV[first + PER_JOB * (i - 1) + 2]
      fresh[model] = (fresh[model] or 0) + 1
    end
  end
  -- Only the jobs of this submission's kind: a batch larger than MAX_QUEUE_DEPTH must not shut out
  -- interactive jobs, nor interactive jobs a batch. O(log n) a model, whatever the queue holds.
  for model, n in pairs(fresh) do
    local depth = redis.call('ZCOUNT', queue_prefix .. model, depth_min, depth_max)
    if depth + n > max_depth then return {'full', queue_prefix .. model} end
  end
end

-- A new record holds no `attempts` nor `run` (0 until start.lua counts them), nor anything its key tells;
-- `...`: the fields it has but not every record (metadata, the extra fields).
local id_from = #owner + 2
local function store_record(i, p, ...)
  redis.call('HSET', KEYS[i], 'id', string.sub(ARGV[p], id_from), 'model', ARGV[p + 2], 'status', 'queued',
    'arq', ARGV[p + 1], 'request', ARGV[p + 4], 'hash', ARGV[p + 3], 'created_at', now, ...)
end

local out, queued = {'ok'}, {}
for i = 1, #KEYS do
  local p = first + PER_JOB * (i - 1)
  local kid, arq_id, model, metadata = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 5]
  if existing[i] then
    out[i + 1] = redis.call('HGETALL', KEYS[i])
  else
    local run = 0
    if existing[i] == false then
      -- Stop the old generation; its worker loses the job (fenced by `run`), its stream gets a reset.
      local old = redis.call('HMGET', KEYS[i], 'status', 'arq', 'model', 'run')
      if old[1] == 'queued' or old[1] == 'running' then
        redis.call('ZREM', queue_prefix .. old[3], old[2])
        redis.call('DEL', arq_prefix .. old[2])
        if old[1] == 'running' then
          redis.call('ZREM', running_prefix .. old[3], kid)
          redis.call('PUBLISH', cancel_prefix .. old[3], kid)
        end
      end
      run = tonumber(old[4] or '0')
      redis.call('DEL', KEYS[i])
      redis.call('PERSIST', stream_prefix .. kid)
    end
    if metadata == '' then
      store_record(i, p, unpack(extra))
    else
      store_record(i, p, 'metadata', metadata, unpack(extra))
    end
    -- The fence only grows: the replaced generation's worker must not write into the new one.
    if run > 0 then redis.call('HSET', KEYS[i], 'run', run) end
    local members = queued[model] or {}
    queued[model] = members
    members[#members + 1] = score
    members[#members + 1] = arq_id
    out[i + 1] = 0
  end
end
-- One ZADD a model (a slice at a time), then its workers are woken.
for model, members in pairs(queued) do
  for from = 1, #members, SLICE do
    redis.call('ZADD', queue_prefix .. model, unpack(members, from, math.min(from + SLICE - 1, #members)))
  end
  redis.call('PUBLISH', wake_prefix .. model, '1')
end
return out
