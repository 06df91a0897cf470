-- Erase finished jobs of one client at its request (DELETE /v1/jobs/{id}, DELETE /v1/jobs?...).
-- KEYS: the set of expiring jobs.
-- ARGV: the key prefixes of records, streams, clients' job indexes and models' activity streams, then the key ids.
-- Returns {erased, key ids not erased because they have not finished}.
--#include forget
local erased, active = 0, {}
for i = 5, #ARGV do
  if forget(ARGV[i], ARGV[1], ARGV[2], ARGV[3], KEYS[1], ARGV[4]) then
    erased = erased + 1
  elseif redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 1 then
    active[#active + 1] = ARGV[i]
  end
end
return {erased, active}
