-- Move a batch from one status to the next, atomically with the counters that finish.lua and cancel.lua
-- keep (`completed`, `failed`, `cancelled`) as the batch's jobs end.
-- KEYS: batch hash.  ARGV: operation, now_ms, result ttl s, then the operation's argument.
--   'total' n        the batch has n jobs: set while validating before the first is queued; cancelling or
--                    finalizing, once it takes no more jobs, the number it has (its queueing may have stopped
--                    midway); cancelling before any was queued (no total yet): it is cancelled
--   'fail' errors    validating → failed, with the validation errors (JSON); cancelling before any job was
--                    queued → cancelled
--   'start'          validating → in_progress (every job is queued)
--   'cancel'         validating or in_progress → cancelling
--   'expire'         validating before any job was queued → expired; validating or in_progress → finalizing,
--                    while its unfinished jobs are cancelled (batch_end.lua makes it expired after its last job)
-- Then, as the job scripts do, a batch in_progress, cancelling or finalizing whose jobs have all ended ends:
-- completed, cancelled or expired, with its time. A batch that ends expires after the results, and settles its
-- client's counts (batch_ended).
-- Returns the status afterwards, or false when the batch does not exist.
--#include batch_end
local batch, op, now, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', batch, 'status')
if not status then return false end
local open = status == 'validating' or status == 'in_progress'

local function become(new, ended)
  redis.call('HSET', batch, 'status', new, new .. '_at', now)
  if ended then
    redis.call('EXPIRE', batch, ttl)
    batch_ended(batch, now, ttl)
  end
  status = new
end

local queued = redis.call('HEXISTS', batch, 'total') == 1  -- jobs may have been queued

if op == 'total' then
  if status == 'validating' then
    redis.call('HSET', batch, 'total', ARGV[4])
  elseif queued and (status == 'cancelling' or status == 'finalizing') then
    -- never fewer than the jobs counted as ended (a job's record may have expired before it was looked for)
    local c = redis.call('HMGET', batch, 'completed', 'failed', 'cancelled')
    local ended = tonumber(c[1] or '0') + tonumber(c[2] or '0') + tonumber(c[3] or '0')
    redis.call('HSET', batch, 'total', math.max(tonumber(ARGV[4]), ended))
  elseif status == 'cancelling' then
    become('cancelled', true)
  end
elseif op == 'fail' then
  if status == 'validating' then
    become('failed', true)  -- first: it reads `total`, set when jobs may have been queued
    redis.call('HSET', batch, 'errors', ARGV[4], 'total', 0)
  elseif status == 'cancelling' and not queued then
    become('cancelled', true)
  end
elseif op == 'start' then
  if status == 'validating' then become('in_progress', false) end
elseif op == 'cancel' then
  if open then become('cancelling', false) end
elseif op == 'expire' then
  if status == 'validating' and not queued then
    become('expired', true)
  elseif open then
    become('finalizing', false)
  end
end

return end_batch_when_done(batch, now, ttl)
