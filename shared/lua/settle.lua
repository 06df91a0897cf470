-- Included (--#include settle) by finish.lua and cancel.lua: a job's end settles what its submission reserved
-- (submit.lua), the client's tokens of the day (the record's `cost`, counted on its `day`) and its finish tag in
-- the model's fair queue (`cost` over `weight`), both moved by `delta` tokens: used - cost for a job that ran,
-- -cost for one cancelled before it ran. `reserved`: the record's cost, day, weight and batch, in that order.
local function settle(owner, reserved, delta, tokens_prefix, finish_key)
  if not (reserved[1] and reserved[2]) or delta == 0 then return end
  local day_key = tokens_prefix .. owner .. ':' .. reserved[2]
  if redis.call('EXISTS', day_key) == 1 then redis.call('INCRBY', day_key, delta) end
  if reserved[3] then
    local field = (reserved[4] and 'batch:' or 'interactive:') .. owner
    redis.call('HINCRBYFLOAT', finish_key, field, delta / tonumber(reserved[3]))
  end
end
