-- Append a coalesced chunk of tokens to the job's stream, only for the run that owns the job.
-- KEYS: job record, stream.  ARGV: run, text, entry id (the worker's, above the run's previous chunk; '*': Redis's).
-- Returns the chunk's entry id, or false when the run no longer owns the job (cancelled, or taken again).
-- A chunk is written once even if sent twice (a client resends a command whose reply it lost in a reconnect,
-- although Redis may have run it): Redis refuses an id not above the stream's last one. Then the last entry
-- tells why. A `token` is this chunk, sent before: while the run owns the job only it writes to the stream,
-- after the `reset` start.lua may have added, and its earlier chunks are below this id. Anything else is that
-- `reset`, written by Redis's clock ahead of the worker's: the chunk goes after it, at an id of Redis's.
local state = redis.call('HMGET', KEYS[1], 'status', 'run')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return false end
local added = redis.pcall('XADD', KEYS[2], ARGV[3], 't', 'token', 'd', ARGV[2])
if type(added) ~= 'table' then return added end
-- any other error (out of memory...) is the caller's; tostring: fakeredis's error is not a Lua string
if not string.find(tostring(added.err), 'equal or smaller', 1, true) then return added end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last[2][2] == 'token' then return last[1] end
return redis.call('XADD', KEYS[2], '*', 't', 'token', 'd', ARGV[2])
