-- Included (--#include stored_buckets) by the scripts that charge a client's stored bytes (max_stored_bytes):
-- stored.lua, batch_create.lua, batch_end.lua. The charges are a hash (keys.stored) of hourly buckets: field = the
-- hour in which the charged items expire (ms since the epoch // STORED_HOUR_MS), value = their bytes. The usage is
-- the sum of the buckets whose hour has not ended: nothing has to run when an item expires, its bucket stops
-- counting (up to an hour late, never early).
local STORED_HOUR_MS = 3600000

local function stored_bucket(ms)
  return math.floor(tonumber(ms) / STORED_HOUR_MS)
end

-- The bytes of the live buckets, dropping the ended (and emptied) ones; and the end (ms) of the earliest live
-- bucket, or nil when there is none.
local function stored_usage(key, now)
  local current = stored_bucket(now)
  local fields = redis.call('HGETALL', key)
  local usage, first = 0, nil
  for i = 1, #fields, 2 do
    local bucket, bytes = tonumber(fields[i]), tonumber(fields[i + 1])
    if bucket < current or bytes <= 0 then
      redis.call('HDEL', key, fields[i])
    else
      usage = usage + bytes
      if first == nil or bucket < first then first = bucket end
    end
  end
  return usage, first and (first + 1) * STORED_HOUR_MS
end

-- Add `delta` bytes (negative: give them back) to the bucket of `expires_ms`; a bucket whose hour has ended is
-- left alone (it no longer counts). The hash is kept until its last bucket ends.
local function stored_add(key, now, expires_ms, delta)
  local bucket = stored_bucket(expires_ms)
  delta = tonumber(delta)
  if delta == 0 or bucket < stored_bucket(now) then return end
  if redis.call('HINCRBY', key, bucket, delta) <= 0 then
    redis.call('HDEL', key, bucket)
  end
  local ends, ttl = (bucket + 1) * STORED_HOUR_MS, redis.call('PTTL', key)
  if ttl == -1 or (ttl >= 0 and tonumber(now) + ttl < ends) then
    redis.call('PEXPIREAT', key, ends)
  end
end
