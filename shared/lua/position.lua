-- The queue position of a queued job: the jobs of its model that will start before it (0: next).
-- KEYS: the job's record, the model's queue, the model's running set.  ARGV: the job's arq job id (its member in
-- the queue).
-- Counted as the entries ahead of it (ZRANK: lower scores run first) less the running jobs, whose entries stay
-- in the queue while they run, ahead of the queued ones but for a client's priorities (take.lua): clamped at 0.
-- Returns {position, not_before (ms, 0: none)}; position -1 when the job is not queued (anymore).
local job = redis.call('HMGET', KEYS[1], 'status', 'not_before')
local not_before = tonumber(job[2]) or 0
if job[1] ~= 'queued' then return {-1, not_before} end
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if not rank then return {-1, not_before} end
return {math.max(0, rank - redis.call('ZCARD', KEYS[3])), not_before}
