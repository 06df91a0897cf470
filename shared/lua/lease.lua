-- Take a lease on one more open event stream of a client, within its max_streams (api/leases.py).
-- KEYS: the client's stream leases (lease id -> expiry ms).
-- ARGV: now_ms, the new lease's expiry (ms), max_streams, the new lease's id.
-- Leases expired (of an API process that stopped refreshing them, e.g. one that crashed) are dropped first.
-- Returns 0 once taken, or the leases open (at least max_streams, so never 0) when it is refused.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[3]) then return open end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0
