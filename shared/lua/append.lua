-- Append a coalesced chunk of tokens to the job's stream, only for the run that owns the job.
-- KEYS: job record, stream.  ARGV: run, text.
-- Returns 1 when written, 0 when the run no longer owns the job (cancelled, or taken again).
local state = redis.call('HMGET', KEYS[1], 'status', 'run')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 't', 'token', 'd', ARGV[2])
return 1
