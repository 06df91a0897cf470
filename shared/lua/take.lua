-- A worker takes up to `slots` queued jobs of its model, from candidates read at the head of the queue (the lowest
-- scores first, as arq reads them), and writes what arq needs to run each: its in-progress key and definition.
-- KEYS: model's queue, model's running set, model's virtual clock.
-- ARGV: now_ms, slots, in-progress lease (ms), definition TTL (ms), the job function's name, the key prefixes of
--       arq's in-progress keys and definitions, of records, of clients' hashes and of the model's client queues
--       (the owner follows), the score separating the tiers (below: interactive), each tier's band (the score of
--       virtual time 0), then the candidates' arq job ids.
-- A candidate is skipped when another worker has it, when its score moved past now (handed back to wait), when
-- its retry backoff runs (`not_before`), or when its client already runs its `max_running` jobs on the model.
-- Priority: for an interactive candidate, the best queued job of its client (its client queue: the highest
-- priority, then the oldest tag) runs instead, and the two swap places in the queue: the fair queue decides when
-- the client's turn comes, the client's own order which of its jobs takes it.
-- The model's virtual clock of the tier moves to the tag of each job taken (start-time fair queuing, submit.lua).
-- Returns {arq id, score, arq id, score, ...} of the jobs taken.
local now, slots, lease, ttl, fn = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local progress_prefix, definition_prefix, job_prefix = ARGV[6], ARGV[7], ARGV[8]
local client_prefix, client_queue_prefix = ARGV[9], ARGV[10]
local boundary, interactive_band, batch_band = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local STALE_LOOKS = 8 -- stale entries of a client queue dropped at most per candidate

local running -- owner -> jobs running on the model, counted once when a client has a cap
local function running_of(owner)
  if running == nil then
    running = {}
    for _, kid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      local who = string.match(kid, '^([^:]*):')
      running[who] = (running[who] or 0) + 1
    end
  end
  return running[owner] or 0
end

local function kid_of(arq_id) return string.match(arq_id, '^(.*)#') end

-- A queued job that may start now: not taken, in the queue at a due score, not waiting out a backoff.
local function ready(arq_id)
  if redis.call('EXISTS', progress_prefix .. arq_id) == 1 then return nil end
  local score = redis.call('ZSCORE', KEYS[1], arq_id)
  if not score or tonumber(score) > now then return nil end
  local state = redis.call('HMGET', job_prefix .. kid_of(arq_id), 'status', 'arq', 'not_before')
  if state[3] and tonumber(state[3]) > now then return nil end
  return tonumber(score), state, score
end

-- The best job of the client to run in the place of `arq_id` (at `score`): the head of its client queue when it
-- may start now, else `arq_id` itself. Entries of jobs that left the queue are dropped on the way.
local function best(owner, arq_id, score)
  local mine = client_queue_prefix .. owner
  for _ = 1, STALE_LOOKS do
    local head = redis.call('ZRANGE', mine, 0, 0)[1]
    if head == nil or head == arq_id then return arq_id, score end
    local other, state = ready(head)
    if other and state[1] == 'queued' and state[2] == head and other < boundary then return head, other end
    if other == nil and redis.call('ZSCORE', KEYS[1], head) then return arq_id, score end -- waiting: not yet
    redis.call('ZREM', mine, head)
  end
  return arq_id, score
end

local taken, clock = {}, {}
for i = 14, #ARGV do
  if #taken >= 2 * slots then break end
  local arq_id = ARGV[i]
  local score, state, score_text = ready(arq_id)
  if score then
    local kid = kid_of(arq_id)
    local owner = string.match(kid, '^([^:]*):')
    local cap = tonumber(redis.call('HGET', client_prefix .. owner, 'max_running') or '0')
    if cap == 0 or running_of(owner) < cap then
      if state[1] == 'queued' and score < boundary then
        local chosen, chosen_score = best(owner, arq_id, score)
        if chosen ~= arq_id then
          -- The client's best job takes this place; this one takes the best job's.
          redis.call('ZADD', KEYS[1], score, chosen, chosen_score, arq_id)
          arq_id, kid = chosen, kid_of(chosen)
        end
      end
      redis.call('ZREM', client_queue_prefix .. owner, arq_id)
      redis.call('SET', progress_prefix .. arq_id, '1', 'PX', lease)
      local definition = '{"t":null,"f":"' .. fn .. '","a":' .. cjson.encode({kid}) .. ',"k":{},"et":' .. now .. '}'
      redis.call('SET', definition_prefix .. arq_id, definition, 'PX', ttl)
      if running ~= nil then running[owner] = (running[owner] or 0) + 1 end
      local tier, tag = 'batch', score - batch_band
      if score < boundary then tier, tag = 'interactive', score - interactive_band end
      if clock[tier] == nil or tag > clock[tier] then clock[tier] = tag end
      taken[#taken + 1] = arq_id
      taken[#taken + 1] = score_text
    end
  end
end
for tier, tag in pairs(clock) do
  local current = tonumber(redis.call('HGET', KEYS[3], tier) or '0')
  if tag > current then redis.call('HSET', KEYS[3], tier, tag) end
end
return taken
