-- Included (--#include forget) by the scripts that erase finished jobs (reap.lua, erase.lua).
--#include index

-- Erase the finished job `kid`: its record, stream, index entries, expiry entry and its activity entry (which names
-- it). Returns true when erased; false when it has not finished (it must be cancelled first) or is unknown (its
-- expiry entry, if any, is dropped).
local function forget(kid, job_prefix, stream_prefix, index_prefix, expiring, activity_prefix)
  local record = job_prefix .. kid
  local job = redis.call('HMGET', record, 'status', 'model', 'index', 'activity')
  if not job[1] then
    redis.call('ZREM', expiring, kid)
    return false
  end
  if job[1] == 'queued' or job[1] == 'running' then return false end
  local owner = string.match(kid, '^([^:]*):')
  index_move(index_scopes(index_prefix, owner, job[2], job[3]), string.sub(kid, #owner + 2), job[1], false)
  if job[4] then redis.call('XDEL', activity_prefix .. job[2], job[4]) end
  redis.call('DEL', record, stream_prefix .. kid)
  redis.call('ZREM', expiring, kid)
  return true
end
