-- Included (--#include index) by the scripts that change a job's status: its entries in its client's listing
-- indexes (keys.index). A job is in one status set of each of its scopes: `model:<model>`, and the scopes its
-- record's `index` field lists (space-separated: its batch, its metadata pairs); each entry scored by its `rank`.

-- The key prefixes (`<index prefix of the owner><scope>:`) of the job's scopes.
local function index_scopes(prefix, owner, model, extra)
  local base = prefix .. owner .. ':'
  local scopes = {base .. 'model:' .. model .. ':'}
  if extra then
    for scope in string.gmatch(extra, '%S+') do scopes[#scopes + 1] = base .. scope .. ':' end
  end
  return scopes
end

-- Job `id` leaves status set `from` and joins `to` (false: none) in each of `scopes`, at `rank`.
local function index_move(scopes, id, from, to, rank)
  for _, scope in ipairs(scopes) do
    if from then redis.call('ZREM', scope .. from, id) end
    if to and rank then redis.call('ZADD', scope .. to, rank, id) end
  end
end
