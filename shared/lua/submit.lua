-- Store and queue a list of jobs in one round trip, all or nothing.
-- KEYS, per job i (3 keys each): job record, arq job definition, model queue.
-- ARGV: now_ms, arq_ttl_ms, max_queue_depth (0: none), then per job: key id, fingerprint,
--       arq job definition, wake channel, n fields, then n field/value pairs.
-- Returns {"conflict", key id} | {"full", queue} | {"ok", r1, r2, ...} where ri is 0 for a new job
-- and the flat HGETALL of the existing record for an identical resubmission.
local now, arq_ttl, max_depth = ARGV[1], ARGV[2], tonumber(ARGV[3])
local jobs, pos = {}, 4
for i = 1, #KEYS / 3 do
  local nfields = tonumber(ARGV[pos + 4])
  local job = {record = KEYS[3 * i - 2], arq = KEYS[3 * i - 1], queue = KEYS[3 * i], kid = ARGV[pos],
               hash = ARGV[pos + 1], definition = ARGV[pos + 2], channel = ARGV[pos + 3],
               first = pos + 5, last = pos + 4 + 2 * nfields}
  local existing = redis.call('HGET', job.record, 'hash')
  if existing and existing ~= job.hash then
    return {'conflict', job.kid}
  end
  job.exists = existing ~= false
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
    redis.call('HSET', job.record, 'created_at', now, unpack(ARGV, job.first, job.last))
    redis.call('SET', job.arq, job.definition, 'PX', arq_ttl)
    redis.call('ZADD', job.queue, now, job.kid)
    woken[job.channel] = true
    out[i + 1] = 0
  end
end
for channel in pairs(woken) do redis.call('PUBLISH', channel, '1') end
return out
