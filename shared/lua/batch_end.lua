-- Included (--#include batch_end) by the scripts that end a batch's jobs or move the batch itself.
--#include stored_buckets

-- A batch that ends leaves its client's unfinished batches (max_active_batches), and its charge (max_stored_bytes:
-- its input's bytes, copied into its jobs) is settled: kept until its jobs' records may expire, `ttl` s after now
-- (as the batch itself), or given back when no job was queued (no `total` yet, or 0). A batch whose `webhook` asks
-- for its end (its new status) has it delivered: an entry `b` (the batch's key), `e`, `t` of the webhook events
-- stream (`webhook_stream`), for `python -m webhooks`. Fields written by batch_create.lua; a batch ends once (its
-- end states are final).
local function batch_ended(batch, now, ttl)
  local b = redis.call('HMGET', batch, 'id', 'client_batches', 'stored', 'charged', 'charged_until', 'total',
    'webhook', 'webhook_stream', 'status')
  if b[2] then redis.call('ZREM', b[2], b[1]) end
  if b[7] and b[8] then
    for _, wanted in ipairs(cjson.decode(b[7])['events'] or {}) do
      if wanted == b[9] then
        redis.call('XADD', b[8], '*', 'b', batch, 'e', b[9], 't', now)
        break
      end
    end
  end
  if not (b[3] and b[4]) then return end
  local charge = tonumber(b[4])
  stored_add(b[3], now, b[5], -charge)
  if tonumber(b[6] or '0') > 0 then
    local charged_until = tonumber(now) + tonumber(ttl) * 1000
    stored_add(b[3], now, charged_until, charge)
    redis.call('HSET', batch, 'charged_until', charged_until)
  else
    redis.call('HDEL', batch, 'charged', 'charged_until')
  end
end

-- A batch in_progress becomes completed, one cancelling cancelled, and one finalizing (past its time, its work
-- left being cancelled) expired, once all its jobs have ended (its counters: completed, failed, cancelled); it
-- then expires with the results. Returns the batch's status afterwards.
local ENDS = {in_progress = 'completed', cancelling = 'cancelled', finalizing = 'expired'}
local function end_batch_when_done(batch, now, ttl)
  local b = redis.call('HMGET', batch, 'total', 'completed', 'failed', 'cancelled', 'status')
  local status = b[5]
  if ENDS[status] and b[1] then
    local ended = tonumber(b[2] or '0') + tonumber(b[3] or '0') + tonumber(b[4] or '0')
    if ended >= tonumber(b[1]) then
      if status ~= 'finalizing' then redis.call('HSET', batch, 'finalizing_at', now) end
      status = ENDS[status]
      redis.call('HSET', batch, 'status', status, status .. '_at', now)
      redis.call('EXPIRE', batch, ttl)
      batch_ended(batch, now, ttl)
    end
  end
  return status
end
