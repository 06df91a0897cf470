-- Take one of a client's upload slots (max_uploads) for an upload, leased until a time the upload pushes back while
-- it runs: the slots of a process that died come back as their leases end.
-- KEYS: the client's uploads (keys.uploads).  ARGV: upload id, now_ms, lease ms, limit (0: none).
-- Returns -1 when taken, else the number of uploads in progress (refused: nothing changed).
local key, id, now, lease, limit = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local count = redis.call('ZCARD', key)
if limit > 0 and count >= limit then return count end
redis.call('ZADD', key, now + lease, id)
redis.call('PEXPIRE', key, lease)
return -1
