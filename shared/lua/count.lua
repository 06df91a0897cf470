-- The sizes of a client's index sets (api/listing.py JobIndex.counts): one reply for a dashboard's poll.
-- KEYS: the sets (keys.index). Returns their ZCARDs, in order.
local counts = {}
for i, key in ipairs(KEYS) do
    counts[i] = redis.call('ZCARD', key)
end
return counts
