-- Included (--#include batch_end) by the scripts that end a batch's jobs or move the batch itself.
-- A batch in_progress becomes completed, and one cancelling becomes cancelled, once all its jobs have
-- ended (its counters: completed, failed, cancelled); it then expires with the results.
-- Returns the batch's status afterwards.
local function end_batch_when_done(batch, now, ttl)
  local b = redis.call('HMGET', batch, 'total', 'completed', 'failed', 'cancelled', 'status')
  local status = b[5]
  if (status == 'in_progress' or status == 'cancelling') and b[1] then
    local ended = tonumber(b[2] or '0') + tonumber(b[3] or '0') + tonumber(b[4] or '0')
    if ended >= tonumber(b[1]) then
      status = status == 'cancelling' and 'cancelled' or 'completed'
      redis.call('HSET', batch, 'status', status, status .. '_at', now, 'finalizing_at', now)
      redis.call('EXPIRE', batch, ttl)
    end
  end
  return status
end
