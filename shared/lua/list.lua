-- A page of a client's jobs, newest first, from its index sets (keys.index): merged by rank, then member.
-- KEYS: the status sets to read (one scope's, or one per model), all of one client.
-- ARGV: page size, the highest rank to read (inclusive), the lowest (inclusive), the cursor's member ('' for none:
--       with one, entries of the highest rank whose member is not below the cursor's were read already), at most
--       how many entries to look at, the key prefix of the client's records (its owner included), the model the
--       jobs must have ('' for any), the scopes the jobs must also be in (space-separated, '' for none).
-- Work is bounded: a page looks at most at the given number of entries, and answers with fewer jobs (and more to
-- come) when the filters reject the rest. An entry whose record is gone (erased by another client call, or
-- expired in a deployment that runs no reaper) is dropped from its set.
-- Returns {more (0 or 1), cursor rank, cursor member, then the flat HGETALL of each job}.
local size, high, low, after = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local budget, record_prefix, model, scopes = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local CHUNK = math.min(size + 1, budget + 1)

-- Per set: its entries read so far (member, rank pairs), the position of the next, and whether more may follow.
local sets = {}
for i = 1, #KEYS do sets[i] = {entries = {}, next = 1, more = true, high = high, skip = after} end

local function fill(set, key)
  local want = CHUNK
  while true do
    local got = redis.call('ZRANGE', key, set.high, low, 'BYSCORE', 'REV', 'LIMIT', 0, want, 'WITHSCORES')
    local entries = {}
    for j = 1, #got, 2 do
      local member, rank = got[j], got[j + 1]
      -- Entries at the bound's rank whose member is not below the last one read came before.
      -- Ranks compare as numbers: Redis may write a score in another form than the cursor's digits.
      if not (set.skip ~= '' and tonumber(rank) == tonumber(set.high) and member >= set.skip) then
        entries[#entries + 1] = member
        entries[#entries + 1] = rank
      end
    end
    set.more = #got == 2 * want
    if #entries > 0 or not set.more then
      set.entries, set.next = entries, 1
      return
    end
    want = want * 2 -- a run of equal ranks longer than a chunk: read further
  end
end

-- The set whose head comes first (highest rank, then highest member), or nil when all are read.
local function head()
  local best, best_rank, best_member
  for i = 1, #KEYS do
    local set = sets[i]
    if set.next > #set.entries and set.more then fill(set, KEYS[i]) end
    if set.next <= #set.entries then
      local member, rank = set.entries[set.next], tonumber(set.entries[set.next + 1])
      if best == nil or rank > best_rank or (rank == best_rank and member > best_member) then
        best, best_rank, best_member = i, rank, member
      end
    end
  end
  return best
end

local required = {}
for scope in string.gmatch(scopes, '%S+') do required[#required + 1] = scope end
local function wanted(record)
  local fields = {}
  for j = 1, #record, 2 do fields[record[j]] = record[j + 1] end
  if model ~= '' and fields['model'] ~= model then return false end
  if #required > 0 then
    local own = ' ' .. (fields['index'] or '') .. ' '
    for _, scope in ipairs(required) do
      if not string.find(own, ' ' .. scope .. ' ', 1, true) then return false end
    end
  end
  return true
end

local out = {0, '', ''}
local looked, found = 0, 0
while found < size and looked < budget do
  local i = head()
  if i == nil then return out end
  local set = sets[i]
  local member, rank = set.entries[set.next], set.entries[set.next + 1]
  set.next = set.next + 2
  set.high, set.skip = rank, member
  looked = looked + 1
  out[2], out[3] = rank, member
  local record = redis.call('HGETALL', record_prefix .. member)
  if #record == 0 then
    redis.call('ZREM', KEYS[i], member)
  elseif wanted(record) then
    out[#out + 1] = record
    found = found + 1
  end
end
-- Each set's next entry comes after the cursor: one more anywhere means another page.
if head() ~= nil then out[1] = 1 end
return out
