-- Take the webhook events whose next attempt is due, for one delivery process: each is leased to it (its score
-- moves to the lease's end), so that it is due again if that process dies before recording its outcome.
-- KEYS: the retries (sorted set), the pending events' states (hash).
-- ARGV: now (ms), the lease's end (ms), the most events to take.
-- Returns a flat list: event id, its state JSON, event id, its state JSON, ... (an id without a state, which no
-- script leaves, is dropped).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local taken = {}
for _, id in ipairs(due) do
  local state = redis.call('HGET', KEYS[2], id)
  if state then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    taken[#taken + 1] = id
    taken[#taken + 1] = state
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return taken
