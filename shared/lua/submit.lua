-- Store and queue a list of jobs in one round trip, all or nothing.
-- KEYS, per job (4 keys each): job record, arq job definition, model queue, token stream.
-- ARGV: now_ms, arq ttl ms, max queue depth (0: none), then the key prefixes of queues, running sets,
--       arq job definitions and cancel channels (for a replaced job, whose keys come from its record),
--       the jobs' score in the queue (lower runs first; arq runs a job once its score is in the past),
--       then per job: key id, fingerprint, arq job id, arq job definition, wake channel,
--       mode ('keep': another body is a conflict; 'replace': it replaces the job), n fields, n field/value pairs.
-- Returns {"conflict", key id} | {"full", queue} | {"ok", r1, r2, ...}: ri is 0 for a stored job and the
-- flat HGETALL of the existing record for an identical resubmission.
local now, arq_ttl, max_depth = ARGV[1], ARGV[2], tonumber(ARGV[3])
local queue_prefix, running_prefix, arq_prefix, cancel_prefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local score = ARGV[8]
local jobs, pos = {}, 9
for i = 1, #KEYS / 4 do
  local nfields = tonumber(ARGV[pos + 6])
  local job = {record = KEYS[4 * i - 3], arq = KEYS[4 * i - 2], queue = KEYS[4 * i - 1], stream = KEYS[4 * i],
               kid = ARGV[pos], hash = ARGV[pos + 1], arq_id = ARGV[pos + 2], definition = ARGV[pos + 3],
               channel = ARGV[pos + 4], mode = ARGV[pos + 5], first = pos + 7, last = pos + 6 + 2 * nfields}
  local existing = redis.call('HGET', job.record, 'hash')
  job.exists = existing == job.hash
  job.replaces = existing and not job.exists
  if job.replaces and job.mode ~= 'replace' then
    return {'conflict', job.kid}
  end
  jobs[i] = job
  pos = job.last + 1
end

if max_depth > 0 then
  local fresh = {}
  for _, job in ipairs(jobs) do
    if not job.exists then fresh[job.queue] = (fresh[job.queue] or 0) + 1 end
  end
  for queue, n in pairs(fresh) do
    if redis.call('ZCARD', queue) + n > max_depth then return {'full', queue} end
  end
end

local out, woken = {'ok'}, {}
for i, job in ipairs(jobs) do
  if job.exists then
    out[i + 1] = redis.call('HGETALL', job.record)
  else
    local run = 0
    if job.replaces then
      -- Stop the old generation; its worker loses the job (fenced by `run`), its stream gets a reset.
      local old = redis.call('HMGET', job.record, 'status', 'arq', 'model', 'run')
      if old[1] == 'queued' or old[1] == 'running' then
        redis.call('ZREM', queue_prefix .. old[3], old[2])
        redis.call('DEL', arq_prefix .. old[2])
        if old[1] == 'running' then
          redis.call('ZREM', running_prefix .. old[3], job.kid)
          redis.call('PUBLISH', cancel_prefix .. old[3], job.kid)
        end
      end
      run = tonumber(old[4] or '0')
      redis.call('DEL', job.record)
      redis.call('PERSIST', job.stream)
    end
    redis.call('HSET', job.record, 'created_at', now, 'run', run, unpack(ARGV, job.first, job.last))
    redis.call('SET', job.arq, job.definition, 'PX', arq_ttl)
    redis.call('ZADD', job.queue, score, job.arq_id)
    woken[job.channel] = true
    out[i + 1] = 0
  end
end
for channel in pairs(woken) do redis.call('PUBLISH', channel, '1') end
return out
