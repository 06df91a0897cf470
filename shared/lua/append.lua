-- Append a coalesced chunk of tokens to the job's stream, only for the run that owns the job.
-- KEYS: job record, stream.  ARGV: run, text, seq (the chunk's number in this run, from 1; 0: unnumbered).
-- Returns 1 when written (or written already), 0 when the run no longer owns the job (cancelled, or taken again).
-- A numbered chunk is written once even if sent twice: a client resends a command whose reply it lost
-- in a reconnect, although Redis may have run it.
local state = redis.call('HMGET', KEYS[1], 'status', 'run', 'seq')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return 0 end
local seq = tonumber(ARGV[3])
if seq > 0 then
  if seq <= tonumber(state[3] or '0') then return 1 end
  redis.call('HSET', KEYS[1], 'seq', seq)
end
redis.call('XADD', KEYS[2], '*', 't', 'token', 'd', ARGV[2])
return 1
