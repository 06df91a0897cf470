-- Move a batch from one status to the next, atomically with the counters that finish.lua and cancel.lua
-- keep (`completed`, `failed`, `cancelled`) as the batch's jobs end.
-- KEYS: batch hash.  ARGV: operation, now_ms, result ttl s, then the operation's argument.
--   'total' n        while validating: the batch has n jobs (set before the first is queued);
--                    cancelling: nothing was queued, the batch is cancelled
--   'fail' errors    validating → failed, with the validation errors (JSON); cancelling → cancelled
--   'start'          validating → in_progress (every job is queued)
--   'cancel'         validating or in_progress → cancelling
--   'expire'         validating or in_progress → expired
-- Then, as the job scripts do, a batch in_progress or cancelling whose jobs have all ended is finalized:
-- completed (or cancelled), with its time and finalizing_at. A batch that ends expires after the results, and
-- settles its client's counts (batch_ended).
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

if op == 'total' then
  if status == 'validating' then
    redis.call('HSET', batch, 'total', ARGV[4])
  elseif status == 'cancelling' then
    become('cancelled', true)
  end
elseif op == 'fail' then
  if status == 'validating' then
    become('failed', true)  -- first: it reads `total`, set when jobs may have been queued
    redis.call('HSET', batch, 'errors', ARGV[4], 'total', 0)
  elseif status == 'cancelling' then
    become('cancelled', true)
  end
elseif op == 'start' then
  if status == 'validating' then become('in_progress', false) end
elseif op == 'cancel' then
  if open then become('cancelling', false) end
elseif op == 'expire' then
  if open then become('expired', true) end
end

return end_batch_when_done(batch, now, ttl)
