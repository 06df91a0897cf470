-- Create a batch, `validating`, unless its client has max_active_batches unfinished batches, or the batch's charge
-- (its input's bytes, until its jobs' records may expire) would take the client past its max_stored_bytes.
-- KEYS: batch hash, the client's batch index (keys.batches), the batches that may expire (keys.active_batches),
--       the client's unfinished batches (keys.client_batches), the client's stored bytes (keys.stored).
-- ARGV: now_ms, batch id, index score (µs), index ttl s, expires_at ms, the batch's member of the expiring set,
--       max_active_batches (0: none), max_stored_bytes (0: none), then the record's fields and values, among which
--       `charged` (bytes) and `charged_until` (ms).
-- Returns {'created'}, or {limit, usage, end (ms) of the earliest stored bucket or false} when refused: then nothing
-- is stored.
--#include stored_buckets
local batch, index, expiring, unfinished, stored = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, id, expires_at = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[5])
local max_active, max_stored = tonumber(ARGV[7]), tonumber(ARGV[8])
local record = {}
for i = 9, #ARGV, 2 do record[ARGV[i]] = ARGV[i + 1] end
local charge = tonumber(record['charged'])

-- A batch past its time is expired by then (or within a second): it no longer counts.
redis.call('ZREMRANGEBYSCORE', unfinished, '-inf', now)
local active = redis.call('ZCARD', unfinished)
if max_active > 0 and active >= max_active then return {'max_active_batches', active, false} end
local usage, first_end = stored_usage(stored, now)
if max_stored > 0 and usage + charge > max_stored then return {'max_stored_bytes', usage, first_end or false} end

redis.call('HSET', batch, unpack(ARGV, 9))
-- The client's index outlives every batch it lists (dead entries are also dropped while listing).
redis.call('ZADD', index, ARGV[3], id)
redis.call('EXPIRE', index, ARGV[4], 'NX')
redis.call('EXPIRE', index, ARGV[4], 'GT')
redis.call('ZADD', expiring, expires_at, ARGV[6])
redis.call('ZADD', unfinished, expires_at, id)
if redis.call('PTTL', unfinished) < expires_at - now then redis.call('PEXPIREAT', unfinished, expires_at) end
stored_add(stored, now, record['charged_until'], charge)
return {'created'}
