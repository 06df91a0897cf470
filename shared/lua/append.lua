-- Append coalesced chunks of tokens to their jobs' streams, each only for the run that owns its job: the chunks
-- of every job of a worker flushed at once go in one call.
-- KEYS: the job record and the stream of each chunk.  ARGV: run, text, entry id of each chunk (the worker's id,
-- above the run's previous chunk; '*': Redis's), in the same order.
-- Returns per chunk its entry id, or false when the run no longer owns the job (cancelled, or taken again).
-- A chunk is written once even if sent twice (a client resends a command whose reply it lost in a reconnect,
-- although Redis may have run it): Redis refuses an id not above the stream's last one. Then the last entry
-- tells why. A `token` is this chunk, sent before: while the run owns the job only it writes to the stream,
-- after the `reset` start.lua may have added, and its earlier chunks are below this id. Anything else is that
-- `reset`, written by Redis's clock ahead of the worker's: the chunk goes after it, at an id of Redis's.
-- Any other error (out of memory...) fails the call; the chunks written before it are refused when sent again.
local function append(record, stream, run, text, id)
  local state = redis.call('HMGET', record, 'status', 'run')
  if state[1] ~= 'running' or state[2] ~= run then return false end
  local added = redis.pcall('XADD', stream, id, 't', 'token', 'd', text)
  if type(added) ~= 'table' then return added end
  -- tostring: fakeredis's error is not a Lua string
  if not string.find(tostring(added.err), 'equal or smaller', 1, true) then return added end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if last[2][2] == 'token' then return last[1] end
  return redis.call('XADD', stream, '*', 't', 'token', 'd', text)
end

local written = {}
for i = 1, #KEYS / 2 do
  local added = append(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i])
  if type(added) == 'table' then return added end
  written[i] = added
end
return written
