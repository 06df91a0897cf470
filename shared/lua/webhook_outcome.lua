-- Record what became of a webhook event's delivery attempt (or of an event dropped, or put off), in one step, so
-- that a delivery process that dies at any point leaves the event either pending (sent again) or recorded.
-- KEYS: the job (or batch) record, the retries (sorted set), the pending events' states (hash), the events stream,
--       the delivery counters (hash).
-- ARGV: the event's id (webhook-id); the delivery state JSON for the record's `webhook_delivery` ('': leave it);
--       when its next attempt is due, in ms ('': the event is done: delivered, given up or dropped); the event's
--       state JSON (kept for that attempt); its stream entry id ('': it came from the retries); the consumer
--       group; then the counters to increment.
-- The record is written only if it still exists: HSET would create a record of its own for an erased or expired
-- job. The retry is written before the stream entry is acknowledged and deleted.
-- Returns 1 when the record exists, else 0.
local exists = redis.call('EXISTS', KEYS[1])
if exists == 1 and ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_delivery', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
if ARGV[5] ~= '' then
  redis.call('XACK', KEYS[4], ARGV[6], ARGV[5])
  redis.call('XDEL', KEYS[4], ARGV[5])
end
for i = 7, #ARGV do
  redis.call('HINCRBY', KEYS[5], ARGV[i], 1)
end
return exists
